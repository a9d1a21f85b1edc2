"""Active learning: MD exploration with a domain-shift trigger, query strategies, an oracle,
a resumable labelling store, and the strategy benchmark (see :mod:`mlip_md.active.loop`)."""
from .config import ActiveConfig, ConfigError, load_config
from .oracle import Oracle, OracleResult
from .store import Store

__all__ = ["ActiveConfig", "ConfigError", "Oracle", "OracleResult", "Store", "load_config", "run"]


def run(config, bars: bool = True, log=print) -> dict:
    """Run (or resume) the loop described by ``config`` (an ActiveConfig or a TOML path)."""
    from .loop import ActiveLoop

    if not isinstance(config, ActiveConfig):
        config = load_config(config)
    return ActiveLoop(config, bars=bars, log=log).run()
