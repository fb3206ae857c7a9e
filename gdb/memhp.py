"""memhp for a checkout: ``(gdb) source gdb/memhp.py`` loads the gdb extension
the package ships (drgn_hotplug/gdb_memhp.py; an installed drgn-hotplug
prints its path with ``drgn-hotplug --gdb-script``)."""

import os

import gdb

gdb.execute("source " + os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                     "drgn_hotplug", "gdb_memhp.py"))
