"""Kernel structures decoded from raw bytes: the reader logic shared by every debugger.

A front end (drgn_reader.py, gdb_reader.py) answers the few questions of
``target.Target`` (bytes, symbols, sizes, offsets, enumerators); the
modules here walk and decode the kernel structures, pure Python, so two
front ends on the same kernel build the same model. As drgn's
``helpers/linux``, one module per kernel subsystem, so that a kernel
change lands in one small file:

============  ===============================================================
target        Target protocol, ReadError, byte decoding, PageCache
list          ``list_head`` lists           (include/linux/list.h)
rbtree        red-black trees               (include/linux/rbtree.h)
xarray        xarrays                       (include/linux/xarray.h)
facts         VMCOREINFO, ``init_uts_ns``: KernelFacts
mmzone        ``mem_section``: section words, flags, subsection maps
memblock      ``memblock.memory`` and ``memblock.reserved``
memory        memory block devices, the memory bus, ``memory_blocks``
node          ``node_devices[]``, online nodes
kernfs        ``struct kernfs_node`` and directory walks (sysfs)
links         nodeN/memoryM and memoryM/nodeN sysfs links
page          a block's node from ``page->flags`` or ``section_to_node_table``
pfn_valid     the functions inlined into an arch ``pfn_valid()``
iomem         the ``iomem_resource`` tree   (kernel/resource.c)
vmemmap       self-hosted memmaps (memmap_on_memory)
compose       ``read_model()``: the whole Model from all of the above
============  ===============================================================
"""
