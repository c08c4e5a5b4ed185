# Entry point on a board and under the emulator: everything lives in imnode.
from imnode.node import main

main()
