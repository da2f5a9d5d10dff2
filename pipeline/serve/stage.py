"""`python -m pipeline serve`: an OpenAI-compatible completions server over a run.

Loads the run's newest checkpoint (or `ckpt=`) once, starts the engine
(model/engine.py: continuous batching over `max_batch` slots, `max_queue`
requests waiting beyond them) and serves pipeline/serve/app.py under uvicorn
on `host:port`, 127.0.0.1 unless told otherwise. Ctrl-C or SIGTERM stops it
(streams in flight get a few seconds to end). docs/serve.md says how to point
an editor at it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from model.config import Config, option
from model.errors import InputError
from model.train_config import Device, DType

if TYPE_CHECKING:
    from pipeline.serve.app import Served

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/serve.yaml"
KEY_ENV = "CODEGPT_API_KEY"
SHUTDOWN_GRACE_S = 5


@dataclass(kw_only=True)
class ServeConfig(Config):
    out_dir: str = option("out/gpt2-124m", "run folder; its newest checkpoint")
    ckpt: str = option("", "one checkpoint file instead of out_dir's newest")
    host: str = option("127.0.0.1", "address to listen on; 0.0.0.0 = every interface")
    port: int = option(8000, "TCP port", ge=1, le=65535)
    name: str = option("", "the model id clients send; empty = the run folder's name")
    api_key: str = option("", f"a key clients must send (Bearer); empty = ${KEY_ENV} or none")
    max_batch: int = option(8, "sequences generated together (KV cache slots)", ge=1)
    max_queue: int = option(32, "requests waiting for a slot; past that a 429", ge=0)
    max_body_bytes: int = option(1 << 20, "largest request body; past that a 413", ge=1024)
    device: Device = option("auto", "auto, cuda or cpu")
    dtype: DType = option("auto", "auto (the run's dtype), bfloat16, float16 or float32")
    threads: int = option(
        0,
        "CPU threads for generation; 0 = auto: OMP_NUM_THREADS when set, else the cores but "
        "one (the HTTP loop and the clients on this box get that one)",
        ge=0,
    )


def cpu_threads(asked: int, environ: dict[str, str], cores: int) -> int:
    """The serve `threads` key resolved (see its help): on a 2-core box auto is 1, which
    measured faster than 2 for the demo model with a client on the box (docs/serve.md)."""
    if asked:
        return asked
    if environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(environ["OMP_NUM_THREADS"]))
    return max(1, cores - 1)


CONFIG = ServeConfig


def listen(host: str, port: int) -> socket.socket:
    """A bound socket, or the one-line error that says why not (port taken, bad host)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise InputError(f"host={host}: {e.strerror}; give an address such as 127.0.0.1") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise InputError(
            f"cannot listen on {host}:{port} ({e.strerror}): another server has it? "
            "stop it or give another port="
        ) from None
    return sock


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _announce(served: Served, ckpt: Path, where: str, device: str, precision: str) -> None:
    """The start line: what is served, where, on which device, the batch limits."""
    engine = served.engine
    log.info(
        "serving %s (step %d) as model '%s' at %s (completions, models; /health): %s, %s, "
        "context %d, fill-in-the-middle %s; max_batch %d, max_queue %d; %s",
        ckpt,
        served.step,
        served.name,
        where,
        device,
        precision,
        served.context,
        "yes" if served.fim else "no (suffix is refused)",
        engine.max_batch,
        engine.max_queue,
        "API key required" if served.api_key else "no API key",
    )


def run(cfg: ServeConfig) -> int:
    import torch
    import uvicorn

    from model.checkpoint import is_checkpoint, list_checkpoints, load_for_inference
    from model.engine import Engine
    from model.runtime import inference_precision
    from pipeline.serve.app import Served, build_app

    target = Path(cfg.ckpt or cfg.out_dir)
    model, train_cfg, step = load_for_inference(target, map_location="cpu")
    device, precision, cache_dtype = inference_precision(train_cfg, cfg.device, cfg.dtype)
    model.to(device)
    sock = listen(cfg.host, cfg.port)  # before the engine: a taken port fails at once
    ckpt = target if is_checkpoint(target) or target.is_file() else list_checkpoints(target)[-1]
    threads = 0
    if device.type == "cpu":
        threads = cpu_threads(cfg.threads, dict(os.environ), os.cpu_count() or 1)
        torch.set_num_threads(threads)
    engine = Engine(
        model,
        max_batch=cfg.max_batch,
        max_queue=cfg.max_queue,
        autocast=precision.autocast,
        cache_dtype=cache_dtype,
        threads=threads,
    )
    served = Served(
        name=cfg.name or ckpt.parent.resolve().name,
        step=step,
        created=int(ckpt.stat().st_mtime),
        context=model.cfg.block_size,
        fim=train_cfg.fim_rate > 0,
        engine=engine,
        api_key=cfg.api_key or os.environ.get(KEY_ENV, ""),
        max_body=cfg.max_body_bytes,
    )
    host, port = sock.getsockname()[:2]
    where = f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"
    name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {threads} threads"
    )
    _announce(served, ckpt, where, name, precision.name)
    if not _loopback(cfg.host) and not served.api_key:
        log.warning("listening on %s without an API key: anyone who reaches it can use it", host)
    config = uvicorn.Config(
        build_app(served),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )
    engine.start()
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        engine.stop()
        sock.close()
    log.info("server stopped")
    return 0
