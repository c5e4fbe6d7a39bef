/*
 * tly_build.h - what this binary was built from, for /metrics'
 * tally_build_info: the project version (CMakeLists.txt's project()) and
 * the git commit at configure time, "unknown" when git or the checkout was
 * not there. Generated into the build tree (tly_build_info.c); no code.
 */
#ifndef TLY_BUILD_H
#define TLY_BUILD_H

extern const char tly_build_version[];
extern const char tly_build_commit[];

#endif
