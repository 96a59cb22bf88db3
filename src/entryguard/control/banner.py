"""What ``entryguard up`` prints once it listens (README "Five minutes" has the same steps)."""

from __future__ import annotations

from rich.console import Console

from entryguard.control.bootstrap import FirstAdmin
from entryguard.control.settings import Settings

README_HINT = 'Next steps: README.md, "Five minutes" (log in with `eg login --email EMAIL`).'


def print_banner(
    first: FirstAdmin | None, api_url: str, edge_url: str | None, settings: Settings
) -> None:
    """What ``entryguard up`` prints once it listens: where everything is, and on the first
    start (the admin was just created) the next steps in full, each line ready to paste;
    later starts point to the README in one line."""
    c = Console(highlight=False, soft_wrap=True)
    c.print(f"[bold green]✓ EntryGuard is running[/bold green]  (data in {settings.data_dir})")
    c.print(f"  API + dashboard  {api_url}   (REST under {api_url}/api/v1)")
    if edge_url:
        c.print(f"  Edge             {edge_url}   (tunnel ports {settings.tunnel_ports})")
    if first is None:
        c.print(f"  {README_HINT}", markup=False)
        return
    c.print()
    c.print("[bold]First start: an admin was created[/bold]")
    c.print(f"  email     {first.email}")
    if first.password:
        c.print(f"  password  {first.password}   [yellow](shown once: store it now)[/yellow]")
    else:
        c.print("  password  from EG_ADMIN_PASSWORD")
    c.print()
    if not edge_url:
        # `entryguard server`: a split deployment; its edges are set up separately.
        c.print(
            "Next: `entryguard edge-token create`, then `entryguard edge --control-url …` "
            '(README.md, "Several replicas and edges").',
            markup=False,
        )
        return
    c.print('Next steps, in another terminal (README.md, "Five minutes", explains each):')
    for line in next_steps(first.email, api_url, edge_url):
        c.print(f"  {line}", markup=False)
    c.print()


def next_steps(email: str, api_url: str, edge_url: str) -> list[str]:
    """The first start's next steps: log in, the agent's key, the agent, a resource, a role."""
    server = "" if api_url == "http://127.0.0.1:8080" else f" --server {api_url}"
    return [
        f"eg login{server} --email {email}",
        "eg admin apikey create prod-agent --scope agent:connect   # prints the agent's key: eg_…",
        "# on the private network (here: a third terminal), with that key:",
        f"eg-agent init --config ./agent.yml --server-url {api_url} --api-key eg_… "
        f"--name prod-agent --tunnel --edge-url {edge_url} && eg-agent run --config ./agent.yml",
        "eg admin resource create production-db --type tunnel --agent prod-agent "
        "--target 127.0.0.1:5432",
        "eg admin role create developers && eg admin role add-resource developers production-db",
        f"eg admin role add-user developers {email}",
        "eg session start --duration 4",
    ]
