# libkvn_conn_memcached.so links libmemcached (Debian: libmemcached-dev); without it the
# example is left out and its tests skip.
pkg_check_modules(MEMCACHED IMPORTED_TARGET libmemcached)
if(MEMCACHED_FOUND)
	target_link_libraries(kvn_conn_memcached PRIVATE PkgConfig::MEMCACHED)
else()
	message(STATUS "kvnode: libmemcached not found: the memcached example connector is not built")
	set_target_properties(kvn_conn_memcached PROPERTIES EXCLUDE_FROM_ALL ON)
	list(REMOVE_ITEM KVN_MODULE_TARGETS kvn_conn_memcached)
endif()
