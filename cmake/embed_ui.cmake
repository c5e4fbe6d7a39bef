# Writes the dashboard's files (FILES: names under DIR, '|'-separated) into
# OUT as one C file: each file's bytes as an array and a table of
# tly_ui_file_t (http/tly_ui.h) naming them, so the binary serves /ui/
# without any file at run time (no CDN: it works offline).
set(body "/* Generated from ui/ by cmake/embed_ui.cmake; do not edit. */\n#include \"tly_ui.h\"\n\n")
set(table "")
set(index 0)
string(REPLACE "|" ";" FILES "${FILES}")
foreach(name ${FILES})
  file(READ ${DIR}/${name} HEX HEX)
  file(SIZE ${DIR}/${name} size)
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," BYTES "${HEX}")
  string(APPEND body "static const unsigned char file_${index}[] = {${BYTES}0x00};\n")
  string(APPEND table "    {\"${name}\", file_${index}, ${size}},\n")
  math(EXPR index "${index} + 1")
endforeach()
string(APPEND body "\nconst tly_ui_file_t tly_ui_files[] = {\n${table}};\n")
string(APPEND body "const size_t tly_ui_file_count = ${index};\n")
file(WRITE ${OUT} "${body}")
