"""The documentation's command reference is the tools' own --help, and every option the
documentation (README.md and docs/) shows a tool with is one that tool accepts."""
import re
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REF = runpy.run_path(str(ROOT / "scripts" / "cli_reference.py"), run_name="cli_reference")


def documents():
    return [(str(path.relative_to(ROOT)), path.read_text()) for path in REF["documents"]()]


def test_generated_blocks_equal_the_generated_help():
    tools = set()
    for name, text in documents():
        tools |= {(kind, tool) for _, kind, tool, _, _ in REF["BLOCK"].findall(text)}
        assert REF["generate"](text) == text, f"{name}: the command reference is stale: run `make cli-reference`"
    for tool in ("registrator", "gatekeeper", "proxy-reloader", "delivery"):
        assert ("usage", tool) in tools and ("help", tool) in tools, f"the docs have no generated block for {tool}"


def test_the_full_reference_is_in_docs_reference_cli():
    text = (ROOT / "docs" / "reference" / "cli.md").read_text()
    helps = {tool for _, kind, tool, _, _ in REF["BLOCK"].findall(text) if kind == "help"}
    assert helps == {"registrator", "gatekeeper", "proxy-reloader", "proxy-reloader-cert", "delivery", "dashboard"}


def options_of(parser):
    return {o for a in parser._actions for o in a.option_strings}


def test_every_option_the_docs_use_with_a_command_exists():
    """A command line in the docs (`gatekeeper wait demo --version v2 --timeout 60`) uses only
    options that command accepts: documentation cannot promise a flag the code dropped."""
    found = REF["parsers"]()
    subs = {tool: dict(REF["commands"](p)) for tool, p in found.items()}
    checked = 0
    pattern = re.compile(r"\b(registrator|gatekeeper|proxy-reloader|delivery)((?: +[^\s`|]+)*)")
    for name, text in documents():
        text = REF["BLOCK"].sub("", text)
        for line in text.splitlines():
            for tool, rest in pattern.findall(line):
                words = rest.split()
                if tool == "proxy-reloader" and words[:1] == ["cert"]:     # a command of its own
                    tool, words = "proxy-reloader-cert", words[1:]
                sub = words[0] if words and words[0] in subs[tool] and words[0] else ""
                accepted = options_of(found[tool]) | options_of(subs[tool][sub] if sub else found[tool])
                for word in words:
                    flag = word.split("=", 1)[0].rstrip(",.;:)")
                    if re.fullmatch(r"--[a-z][a-z-]+", flag):
                        checked += 1
                        assert flag in accepted, f"{name}: {tool} {sub} has no option {flag}: {line.strip()}"
    assert checked >= 4, f"only {checked} options found: the pattern no longer matches the docs"


# Options the docs mention that belong to other programs: Docker, Compose, Ansible, the benchmarks.
OTHER_PROGRAMS = {"--ip", "--network", "--rm", "--tlsverify", "--no-deps", "--entrypoint", "--syntax-check",
                  "--check", "--containers", "--deploys", "--runs", "--services", "--starts", "--only",
                  "--rounds", "--changes", "--instances", "--pages", "--idle", "--rate", "--leader", "--routes",
                  # docker service create / update / run, as the Swarm guide shows them
                  "--replicas", "--no-resolve-image", "--publish", "--container-label", "--health-cmd",
                  "--health-interval", "--health-retries", "--health-start-period", "--update-order",
                  "--update-failure-action", "--restart-delay", "--label", "--image", "--restart",
                  "--listen-addr",
                  # the helper modules the Makefile and scripts run (python -m catalog.backup, catalog.acl_setup)
                  "--tokens", "--node", "--host",
                  # curl, trusting the stack's own CA; and reading nginx's push socket (operations.md)
                  "--cacert", "--resolve", "--http2", "--unix-socket"}


def test_every_option_the_docs_mention_belongs_to_a_tool():
    ours = set()
    for parser in REF["parsers"]().values():
        for _, sub in REF["commands"](parser):
            ours |= options_of(sub)
    for name, text in documents():
        mentioned = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", REF["BLOCK"].sub("", text)))
        assert mentioned - ours - OTHER_PROGRAMS == set(), f"{name} mentions options no tool has"


def test_help_says_each_default_once_and_names_the_token_file_variable():
    for tool, parser in REF["parsers"]().items():
        for name, sub in REF["commands"](parser):
            text = sub.format_help()
            for line in re.split(r"\n  (?=-)", text):
                assert line.count("(default") <= 1, f"{tool} {name}: {line}"
            if any("--consul-token-file" in a.option_strings for a in sub._actions):
                assert "CONSUL_HTTP_TOKEN_FILE" in text, f"{tool} {name} --help"
