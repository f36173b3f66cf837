"""`python -m data_pipeline.acba write ...`: see data_pipeline.acba.writer."""

import sys

from data_pipeline.acba import writer

writer.main(sys.argv[1:])
