"""Child process for the SIGTERM test: serve the app, queue many events at start-up, say so."""

from __future__ import annotations

import sys

import uvicorn

from relaymeter.app import create_app
from relaymeter.config import load_settings
from relaymeter.http_protocol import http_protocol
from relaymeter.services import Service
from relaymeter.state import AppState
from tests.test_store_summary import make_events


class _Flood:
    name = "flood"

    def __init__(self, state: AppState, n: int) -> None:
        self.state = state
        self.n = n

    async def start(self) -> None:
        for ev in make_events(self.n, seed=99):
            self.state.writer.submit(ev)
        print(f"queued {self.n} depth {self.state.writer.depth}", flush=True)

    async def stop(self) -> None:
        print(f"stopping with depth {self.state.writer.depth}", flush=True)


def main() -> None:
    data_dir, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    import relaymeter.services as services

    original = services.service_factories

    def factories() -> list[services.ServiceFactory]:
        flood: services.ServiceFactory = lambda state: _Flood(state, n)  # noqa: E731
        return [*original(), flood]

    services.service_factories = factories
    settings = load_settings(
        f"{data_dir}/none.toml", data_dir=data_dir, admin_password="x", writer_batch_size=500
    )
    assert isinstance(_Flood, type) and Service is not None
    uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="warning", http=http_protocol())


if __name__ == "__main__":
    main()
