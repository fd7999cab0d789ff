# The integration fixtures (tiny model configs, small data files) serve the golden curves too.
from integration.conftest import *  # noqa: F401,F403
