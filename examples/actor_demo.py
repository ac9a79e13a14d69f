"""An actor: one task owns some state and handles messages one at a time.

    python examples/actor_demo.py

A bank-account actor keeps a balance without any lock: deposits are sent
fire-and-forget (``send``), balance queries and withdrawals are asked
(``ask``) and get a reply - or the handler's exception, in the asker only.
A plain thread posts deposits too (``sync_send``).  Leaving the ``async
with`` block closes the mailbox and waits until every message is handled.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from anycore import Actor


@dataclass
class Deposit:
    amount: int


@dataclass
class Withdraw:
    amount: int


@dataclass
class Balance:
    pass


class InsufficientFunds(Exception):
    pass


class Account:
    """The actor's state and handler: only the actor's task touches it."""

    def __init__(self) -> None:
        self.balance = 0

    async def handle(self, msg: Deposit | Withdraw | Balance) -> int:
        if isinstance(msg, Deposit):
            self.balance += msg.amount
        elif isinstance(msg, Withdraw):
            if msg.amount > self.balance:
                raise InsufficientFunds(f"balance {self.balance} < {msg.amount}")
            await asyncio.sleep(0)  # a real handler might await I/O here
            self.balance -= msg.amount
        return self.balance


async def main() -> None:
    account = Account()
    async with Actor(account.handle, mailbox_size=16, name="account") as actor:
        # Many concurrent senders; the actor serialises them.
        await asyncio.gather(*(actor.send(Deposit(10)) for _ in range(50)))

        def thread_deposits() -> None:
            for _ in range(25):
                actor.sync_send(Deposit(2))

        await asyncio.to_thread(thread_deposits)
        print("balance after deposits:", await actor.ask(Balance()))
        print("after withdrawing 120:", await actor.ask(Withdraw(120)))
        try:
            await actor.ask(Withdraw(10_000))
        except InsufficientFunds as exc:
            print("refused:", exc)
        for _ in range(5):
            actor.send_nowait(Deposit(1))
    # The block waited for the five last deposits.
    stats = actor.statistics()
    print(f"final balance {account.balance}; handled {stats.handled}, failed {stats.failed}")
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
