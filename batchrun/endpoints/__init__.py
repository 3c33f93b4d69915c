"""Several endpoints for one job (`--endpoints FILE.toml`): the file, and the routing rules."""

from batchrun.endpoints.config import EndpointConfig, check_serves, load_endpoints
from batchrun.endpoints.routing import Out, Standing, cool_off_s, may_take, verdict

__all__ = ["EndpointConfig", "Out", "Standing", "check_serves", "cool_off_s", "load_endpoints",
           "may_take", "verdict"]
