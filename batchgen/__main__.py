from batchgen.cli import console_main

console_main()
