"""python -m relaymeter"""

from relaymeter.cli import main

main()
