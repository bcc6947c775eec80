"""``python -m sfport`` runs the command line."""
import sys

from sfport.cli import main

sys.exit(main())
