"""multiprocessing: a custom manager serving a user class with a custom proxy.

Classic: ``MyManager.register("Vector", Vector, proxytype=VectorProxy)``
where ``VectorProxy(BaseProxy)`` lists ``_exposed_`` and defines
``__iadd__`` (an in-place add that calls the server and returns the proxy)
and a property that calls a getter.  Changed: the proxy subclasses
``anycore.AsyncProxy``; calls are awaited, so ``v += w`` becomes ``await
v.iadd(w)`` and the property becomes an awaitable method.

    python examples/classic/mp_custom_manager.py
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anycore


class Vector:
    """The shared object: lives in the manager's server process."""

    def __init__(self, *coords: float) -> None:
        self.coords = list(coords)

    def iadd(self, other: list[float]) -> None:
        self.coords = [a + b for a, b in zip(self.coords, other, strict=True)]

    def get_norm(self) -> float:
        return float(sum(c * c for c in self.coords) ** 0.5)

    def tolist(self) -> list[float]:
        return list(self.coords)


class VectorProxy(anycore.AsyncProxy):
    _exposed_ = ("iadd", "get_norm", "tolist")

    async def iadd(self, other: list[float]) -> VectorProxy:
        await self._callmethod("iadd", (other,))
        return self  # as __iadd__ returns self

    async def norm(self) -> float:  # the classic proxy's property
        result: float = await self._callmethod("get_norm")
        return result


class VectorManager(anycore.BaseManager):
    Vector: Callable[..., Awaitable[VectorProxy]]  # made by register(); typed for checkers


VectorManager.register("Vector", Vector, proxytype=VectorProxy)


async def main() -> None:
    async with VectorManager() as manager:
        v = await manager.Vector(3.0, 0.0)
        v = await v.iadd([0.0, 4.0])
        print("vector", await v.tolist(), "norm", await v.norm())
        try:
            v.coords  # noqa: B018 - not exposed: a clear error
        except anycore.MethodNotExposed as exc:
            print("refused:", exc)


if __name__ == "__main__":
    anycore.run(main)
