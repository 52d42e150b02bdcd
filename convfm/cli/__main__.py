"""`python -m convfm.cli`: the same as the `convfm` command."""
import sys

from convfm.cli.main import main

sys.exit(main())
