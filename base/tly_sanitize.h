/*
 * tly_sanitize.h - TLY_ADDRESS_SANITIZER: 1 in a build with
 * AddressSanitizer (gcc's __SANITIZE_ADDRESS__, clang's __has_feature),
 * else 0. Its allocator stands in for glibc's malloc, so what works with
 * glibc's allocator or with pages directly (tly_slab.c, tly_malloc.c) goes
 * another way under it, and RSS says nothing of tally's (tests).
 */
#ifndef TLY_SANITIZE_H
#define TLY_SANITIZE_H

#if defined(__SANITIZE_ADDRESS__)
#define TLY_ADDRESS_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TLY_ADDRESS_SANITIZER 1
#endif
#endif
#ifndef TLY_ADDRESS_SANITIZER
#define TLY_ADDRESS_SANITIZER 0
#endif

#endif
