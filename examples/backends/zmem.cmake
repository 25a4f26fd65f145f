# zmem needs libzstd (Debian: libzstd-dev) and xxhash's header (used inline, nothing to link).
pkg_check_modules(ZSTD IMPORTED_TARGET libzstd)
if(ZSTD_FOUND)
	target_link_libraries(kvn_zmem PRIVATE PkgConfig::ZSTD)
else()
	target_link_libraries(kvn_zmem PRIVATE zstd)
endif()
target_include_directories(kvn_zmem PRIVATE ${XXHASH_INCLUDE_DIRS})
