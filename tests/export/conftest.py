"""The export tests reuse the tiny random HF Gemma builders of tests/models."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "models"))
