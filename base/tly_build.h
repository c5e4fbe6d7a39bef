/*
 * tly_build.h - what this binary was built from, for /metrics'
 * tally_build_info: the project version (CMakeLists.txt's project()) and
 * the source tree's git commit at build time ("-dirty" with uncommitted
 * changes, "unknown" outside a checkout), as `tally --version` prints
 * them. Defined in the build tree (generated/tly_build_info.c); no code.
 */
#ifndef TLY_BUILD_H
#define TLY_BUILD_H

extern const char tly_build_version[];
extern const char tly_build_commit[];

#endif
