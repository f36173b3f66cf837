"""`python -m atjax.serve INDEX`: a search page for an index, on http://127.0.0.1:8000/
(atjax.search.server)."""

import sys

from atjax.search import server

if __name__ == "__main__":
    sys.exit(server.main())
