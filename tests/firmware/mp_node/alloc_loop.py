# Runs under MicroPython: boots the real node (emulated board from IMUSIC_EMU) and measures heap
# allocation across N iterations of the sample-pack-send loop. Prints one line:
#   ALLOC <bytes allocated> <frames sent> <iterations>
# then, with the heap locked (any allocation raises MemoryError), runs N more iterations and prints
#   LOCKED OK
import gc
import sys

import micropython

from imnode.node import make_node

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
node = make_node()
node.boot()
node.run(300)  # past the first STATUS frames and every lazily made object
gc.collect()
gc.disable()  # nothing may be freed behind our back: any allocation shows in mem_alloc
seq0 = node.seq
before = gc.mem_alloc()
node.run(n)
after = gc.mem_alloc()
print("ALLOC", after - before, (node.seq - seq0) & 0xFFFF, n)
micropython.heap_lock()
try:
    node.run(n)
finally:
    micropython.heap_unlock()
print("LOCKED OK")
