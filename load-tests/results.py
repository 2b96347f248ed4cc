"""Reading the results directory of a benchmark driver (load-tests/*/run.sh), for the report
scripts (cluster/report.py, replication/report.py): its JSON and text files and meta.txt."""

import json
import os


class Results:
    """The files of one results directory; a missing or unreadable file reads as nothing."""

    def __init__(self, res):
        self.res = res

    def load(self, name):
        """The JSON in `name`, or None."""
        try:
            with open(os.path.join(self.res, name)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def text(self, name):
        """The text of `name`, or ""."""
        try:
            with open(os.path.join(self.res, name)) as f:
                return f.read()
        except OSError:
            return ""

    def meta(self):
        """meta.txt's key=value lines (the machine, the tree, the parameters)."""
        return dict(l.split("=", 1) for l in self.text("meta.txt").splitlines() if "=" in l)
