"""`python -m atjax.search INDEX QUERY`: the files of an index that best match a query
(atjax.search.query)."""

import sys

from atjax.search import query

sys.exit(query.main())
