"""Source values under MicroPython, to compare bit for bit with CPython.

stdin: {"seed": s, "imus": [i, ...], "times": [t_us, ...], "table": path}
"""
from array import array

from emu_source import SimpleMotion, TableSource
from harness import args, emit

a = args()
out = array("i", [0] * 9)
motion = SimpleMotion(a["seed"])
table = TableSource(a["table"])
motion_values = []
table_values = []
for imu in a["imus"]:
    for t_us in a["times"]:
        motion.read(imu, t_us, out)
        motion_values.append(list(out))
        table.read(imu % table.n_imus, t_us, out)
        table_values.append(list(out))
emit({"motion": motion_values, "table": table_values})
