"""Private, throwaway PostgreSQL and MariaDB servers, from a clone: `python -m twostep.testing`.

Usage: .venv/bin/python scripts/throwaway_dbs.py up [--dir DIR]
(the servers themselves are in testing/, the installed module `twostep.testing`).
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("twostep.testing", run_name="__main__", alter_sys=True)
