"""``companion check``: everything the server would load, validated without serving."""

from __future__ import annotations

from pathlib import Path

from companion_engine.errors import ConfigError, Problem


async def run_checks(config_path: Path | None) -> tuple[list[Problem], list[str]]:
    """Return (problems, summary lines). Never raises for bad user files."""
    from companion_engine.configload import load_config, load_profile
    from companion_engine.pipeline import build_pipeline
    from companion_engine.plugins import PluginHost

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        return exc.problems, []
    problems: list[Problem] = []
    summary: list[str] = [f"config: {config.source or 'defaults (no companion.yaml)'}"]

    host = PluginHost.load(config.path("plugins"))
    for err in host.errors:
        src = err.source or err.plugin
        file, _, line = src.partition(":") if ":" in src else (src, "", "")
        problems.append(Problem(file, int(line) if line.isdigit() else None, "",
                                f"plugin {err.plugin}: {err.stage}: {err.error}"))
    n_plugins = sum(1 for i in host.infos.values() if not i.builtin)
    n_stages = sum(len(v) for v in host.stages.values())
    summary.append(f"plugins: {n_plugins} third-party, {n_stages} stages registered")

    profiles_dir = config.path("profiles")
    names = sorted(p.stem for p in profiles_dir.glob("*.yaml")) if profiles_dir.is_dir() else []
    if config.profile not in names:
        names.insert(0, config.profile)
    default_character: str | None = None
    for name in names:
        try:
            profile, doc = load_profile(config, name)
            build_pipeline(profile, host, doc=doc)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if name == config.profile:
            default_character = profile.character
        summary.append(f"profile {name}: ok ({len(profile.prompt)} prompt stages, "
                       f"llm {profile.llm.model}, tts {profile.speech.tts.name})")

    try:
        from companion_engine.cards.store import CharacterStore
        from companion_engine.store import open_store

        store = await open_store("sqlite:///:memory:", config.base_dir)
        try:
            characters = CharacterStore(config.path("characters"), store,
                                        default_id=default_character)
            await characters.load()
            problems.extend(getattr(characters, "problems", []))
            summary.append(f"characters: {len(characters.list())} in {config.path('characters')}")
            if default_character and characters.get(default_character) is None:
                problems.append(Problem(f"profiles/{config.profile}.yaml", None, "character",
                                        f"character {default_character!r} not found"))
        finally:
            await store.close()
    except ImportError as exc:  # pragma: no cover - the store ships with the package
        problems.append(Problem(str(config.path("characters")), None, "", str(exc)))
    return problems, summary
