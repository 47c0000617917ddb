import os
import sys

# Tests import the package from the repository root, however pytest is started.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
