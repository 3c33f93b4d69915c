"""Several endpoints for one job (`--endpoints FILE.toml`): the file, and the routing rules."""

from batchrun.routing.config import EndpointConfig, check_serves, load_endpoints
from batchrun.routing.rules import Out, Standing, cool_off_s, may_take, verdict

__all__ = ["EndpointConfig", "Out", "Standing", "check_serves", "cool_off_s", "load_endpoints",
           "may_take", "verdict"]
