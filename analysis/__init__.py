"""The pipeline: one module per DVC stage, plus the shared code they import (see README.md)."""
