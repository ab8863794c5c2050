"""`cohort client identity` and `cohort client peers`: a site's identity and the peers it pins."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.common import console, fail, friendly_errors

peers_app = typer.Typer(
    help="Pin other sites' identities, as your institutions agreed them out of band.",
    no_args_is_help=True,
)

StateDir = Annotated[
    Path, typer.Option(envvar="COHORT_STATE_DIR", help="The agent's state folder.")
]
SiteName = Annotated[
    str, typer.Option(envvar="COHORT_SITE_NAME", help="This site's name (as `client run --name`).")
]


def register(client_app: typer.Typer) -> None:
    """Add ``identity`` and ``peers`` under ``cohort client``."""
    client_app.command("identity")(identity)
    client_app.add_typer(peers_app, name="peers")


def _site(name: str) -> str:
    from client.peers import check_site_name

    if not name:
        fail("--name is required (this site's name, e.g. hospital-a)")
    return check_site_name(name)


@friendly_errors
def identity(name: SiteName = "", state_dir: StateDir = Path("cohort-site")) -> None:
    """Print this site's identity fingerprint: read it to the other institutions to pin.

    The identity (Ed25519) is made on first use and kept 0600 in the state folder; the
    agent signs its sealing key, key statements and updates with it.
    """
    from client.custody import SiteIdentity
    from crypto.identity import format_fingerprint

    site = SiteIdentity.load_or_create(state_dir, _site(name))
    console.print(f"site         {site.site_name}")
    console.print(f"fingerprint  [bold]{format_fingerprint(site.fingerprint)}[/]", highlight=False)
    console.print(f"identity     {site.path}")
    console.print(
        f"Others pin it with: cohort client peers add {site.site_name} {site.fingerprint}",
        highlight=False,
        soft_wrap=True,
    )


@peers_app.command("add")
@friendly_errors
def peers_add(
    peer: Annotated[str, typer.Argument(help="The other site's name.")],
    fingerprint: Annotated[
        str, typer.Argument(help="Its fingerprint (32 hex digits; spaces allowed).")
    ],
    name: SiteName = "",
    state_dir: StateDir = Path("cohort-site"),
) -> None:
    """Pin a site's fingerprint (replacing an earlier pin: do so only on its word)."""
    from client.peers import PeerStore, check_site_name
    from crypto.identity import format_fingerprint

    store = PeerStore.load(state_dir, _site(name))
    previous = store.fingerprint_of(check_site_name(peer))
    store.pin(peer, fingerprint)
    pinned = format_fingerprint(store.pins[peer])
    if previous and previous != store.pins[peer]:
        console.print(
            f"re-pinned {peer}: {format_fingerprint(previous)} → {pinned}", highlight=False
        )
    else:
        console.print(f"pinned {peer}: {pinned}", highlight=False)


@peers_app.command("list")
@friendly_errors
def peers_list(name: SiteName = "", state_dir: StateDir = Path("cohort-site")) -> None:
    """The sites this site trusts, and how each was pinned."""
    from client.peers import PeerStore
    from crypto.identity import format_fingerprint

    store = PeerStore.load(state_dir, _site(name))
    if not store.pins:
        console.print("no peers pinned: `cohort client peers add NAME FINGERPRINT`")
        return
    table = Table("site", "fingerprint", "pinned by")
    for peer, value in sorted(store.pins.items()):
        how = "first use (TOFU)" if peer in store.first_seen else "operator"
        table.add_row(peer, format_fingerprint(value), how)
    console.print(table)


@peers_app.command("remove")
@friendly_errors
def peers_remove(
    peer: Annotated[str, typer.Argument(help="The site to stop trusting.")],
    name: SiteName = "",
    state_dir: StateDir = Path("cohort-site"),
) -> None:
    """Stop trusting a site: no key is sealed to it, no statement or update of it accepted."""
    from client.peers import PeerStore

    store = PeerStore.load(state_dir, _site(name))
    if not store.remove(peer):
        fail(f"{peer!r} is not pinned at this site (`cohort client peers list`)")
    console.print(f"removed {peer}")
