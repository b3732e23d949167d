"""pydron.conf: where it is found, what it may contain, and how bad files are reported."""
from __future__ import annotations

import json
import os
import pathlib
import re

import pytest

import pydron.config as config
from pydron.config import Config, WorkerSpec, find_config_path, load_config, parse_config
from pydron.errors import ConfigError

THREADS_2 = {"workers": [{"type": "threads", "count": 2}]}


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Separate cwd, home and /etc stand-ins, with $PYDRON_CONF unset."""
    dirs = {name: tmp_path / name for name in ("cwd", "home", "etc", "env")}
    for d in dirs.values():
        d.mkdir()
    monkeypatch.delenv("PYDRON_CONF", raising=False)
    monkeypatch.chdir(dirs["cwd"])
    monkeypatch.setenv("HOME", str(dirs["home"]))
    monkeypatch.setattr(config, "SYSTEM_CONF", dirs["etc"] / "pydron.conf")
    return dirs


def write(path: pathlib.Path, data: object) -> pathlib.Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def threads_file(path: pathlib.Path, count: int) -> pathlib.Path:
    return write(path, {"workers": [{"type": "threads", "count": count}]})


# --------------------------------------------------------------------------- discovery


def test_no_file_anywhere_gives_the_default(places):
    assert find_config_path() is None
    conf = load_config()
    assert conf.source == "<default>"
    assert conf.workers == (WorkerSpec("multicore", config.local_cores(), {}),)
    assert conf.max_retries == 3 and conf.window is None


def test_default_uses_the_cores_this_process_may_use():
    expected = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                else os.cpu_count())
    assert config.default_config().workers[0].count == expected


def test_search_order(places, monkeypatch):
    etc = threads_file(places["etc"] / "pydron.conf", 1)
    assert find_config_path() == etc
    home = threads_file(places["home"] / "pydron.conf", 2)
    assert find_config_path() == home
    cwd = threads_file(places["cwd"] / "pydron.conf", 3)
    assert find_config_path() == cwd
    env = threads_file(places["env"] / "custom.json", 4)
    monkeypatch.setenv("PYDRON_CONF", str(env))
    assert find_config_path() == env
    assert load_config().workers[0].count == 4
    monkeypatch.delenv("PYDRON_CONF")
    assert load_config().workers[0].count == 3
    cwd.unlink()
    assert load_config().workers[0].count == 2
    home.unlink()
    assert load_config().workers[0].count == 1
    assert load_config().source == str(etc)


def test_candidate_paths_order(places, monkeypatch):
    monkeypatch.setenv("PYDRON_CONF", str(places["env"] / "x.conf"))
    assert config.candidate_paths() == [
        places["env"] / "x.conf",
        places["cwd"] / "pydron.conf",
        places["home"] / "pydron.conf",
        places["etc"] / "pydron.conf",
    ]


def test_env_var_pointing_nowhere_is_an_error(places, monkeypatch):
    threads_file(places["cwd"] / "pydron.conf", 3)  # must not be used as a fallback
    missing = places["env"] / "nope.conf"
    monkeypatch.setenv("PYDRON_CONF", str(missing))
    with pytest.raises(ConfigError) as info:
        load_config()
    assert str(missing) in str(info.value)
    assert "PYDRON_CONF" in str(info.value)


def test_empty_env_var_counts_as_unset(places, monkeypatch):
    monkeypatch.setenv("PYDRON_CONF", "")
    cwd = threads_file(places["cwd"] / "pydron.conf", 3)
    assert find_config_path() == cwd


def test_relative_env_var_is_relative_to_cwd(places, monkeypatch):
    threads_file(places["cwd"] / "mine.json", 5)
    monkeypatch.setenv("PYDRON_CONF", "mine.json")
    assert find_config_path() == places["cwd"] / "mine.json"
    assert load_config().workers[0].count == 5


def test_explicit_path(tmp_path):
    path = threads_file(tmp_path / "a.conf", 6)
    conf = load_config(path)
    assert conf.source == str(path)
    assert conf.workers == (WorkerSpec("threads", 6, {}),)
    assert load_config(str(path)) == conf


def test_explicit_missing_path(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'none.conf'}: no such file")):
        load_config(tmp_path / "none.conf")


# --------------------------------------------------------------------------- valid content


def test_full_file(tmp_path):
    path = write(tmp_path / "pydron.conf", {
        "workers": [{"type": "threads", "count": 3}, {"type": "inline"}],
        "max_retries": 0,
        "window": 16,
    })
    conf = load_config(path)
    assert conf == Config(workers=(WorkerSpec("threads", 3, {}), WorkerSpec("inline", 1, {})),
                          source=str(path), max_retries=0, window=16)
    assert conf.capacity == 4


def test_threads_count_defaults_to_cores():
    conf = parse_config({"workers": [{"type": "threads"}]})
    assert conf.workers[0].count == config.local_cores()
    assert conf.source == "<dict>"


def test_missing_workers_means_default_workers():
    conf = parse_config({"max_retries": 5}, "here")
    assert conf.workers == config.default_config().workers
    assert conf.max_retries == 5 and conf.source == "here"


def test_config_is_frozen():
    conf = parse_config(THREADS_2)
    with pytest.raises(AttributeError):
        conf.window = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        conf.workers[0].options["x"] = 1  # type: ignore[index]


def test_example_file_is_valid():
    example = pathlib.Path(__file__).resolve().parents[1] / "pydron.conf.example"
    conf = load_config(example)
    assert conf.workers[0].type == "threads"


def test_every_accepted_key_is_documented():
    docs = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    keys = set(config._TOP_LEVEL)
    for kind, spec in config.WORKER_TYPES.items():
        assert f'"type": "{kind}"' in docs
        keys |= set(spec.keys) | set(spec.aliases) | set(spec.obsolete)
    for key in keys:
        assert f"| `{key}` |" in docs, key
    for old in config.LEGACY_EC2_PROVIDERS:
        assert f"`{old}`" in docs, old


# --------------------------------------------------------------------------- invalid content


def check_error(tmp_path, content, key_path, found, expected):
    """Write content to a file, load it, and check every part of the message."""
    path = write(tmp_path / "pydron.conf", content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key_path}: "), message
    assert f"expected {expected}" in message, message
    assert f"found {found}" in message, message
    return message


def test_the_message_of_the_brief(tmp_path):
    message = check_error(
        tmp_path, {"workers": [{"type": "inline"}, {"type": "threads", "count": "four"}]},
        "workers[1].count", '"four"', "an integer from 1 to 1024")
    assert message == f'{tmp_path / "pydron.conf"}: workers[1].count: ' \
                      'expected an integer from 1 to 1024, found "four"'


@pytest.mark.parametrize("value, found", [
    (0, "0"), (-2, "-2"), (2.0, "2.0"), (True, "true"), (None, "null"), ([4], "an array [4]"),
])
def test_bad_count(tmp_path, value, found):
    check_error(tmp_path, {"workers": [{"type": "threads", "count": value}]},
                "workers[0].count", found, "an integer from 1 to 1024")


def test_unknown_type(tmp_path):
    check_error(tmp_path, {"workers": [{"type": "gpu"}]},
                "workers[0].type", '"gpu"',
                'one of "cloud", "dask", "inline", "multicore", "sge", "slurm", "ssh", '
                '"threads"')


def test_type_not_a_string(tmp_path):
    check_error(tmp_path, {"workers": [{"type": 7}]}, "workers[0].type", "7", "one of")


def test_missing_type(tmp_path):
    check_error(tmp_path, {"workers": [{"count": 2}]},
                "workers[0].type", "nothing (the key is missing)", "a worker type")


def test_unknown_worker_key(tmp_path):
    check_error(tmp_path, {"workers": [{"type": "threads", "cores": 2}]},
                "workers[0]", 'unknown key "cores"', 'only the keys "count", "type"')


def test_inline_takes_no_count(tmp_path):
    check_error(tmp_path, {"workers": [{"type": "inline", "count": 2}]},
                "workers[0]", 'unknown key "count"', 'only the keys "type" for type "inline"')


def test_worker_entry_not_an_object(tmp_path):
    check_error(tmp_path, {"workers": ["threads"]}, "workers[0]", '"threads"', "an object")


@pytest.mark.parametrize("workers, found", [
    ([], "an empty array []"),
    ({"type": "threads"}, 'an object {"type": "threads"}'),
    ("threads", '"threads"'),
    (None, "null"),
])
def test_workers_not_a_non_empty_list(tmp_path, workers, found):
    check_error(tmp_path, {"workers": workers}, "workers", found,
                "a non-empty array of worker entries")


@pytest.mark.parametrize("content, found", [
    ([1, 2], "an array [1, 2]"), ("x", '"x"'), (3, "3"), (None, "null"),
])
def test_top_level_not_an_object(tmp_path, content, found):
    check_error(tmp_path, json.dumps(content), "top level", found, "a JSON object")


def test_unknown_top_level_key(tmp_path):
    message = check_error(tmp_path, {"worker": []}, "top level", 'unknown key "worker"',
                          f"only the keys {config._quoted(config._TOP_LEVEL)}")
    assert message.endswith('found unknown key "worker" (did you mean "workers"?)')


@pytest.mark.parametrize("content, path, suggestion", [
    ({"max_retry": 2}, "top level", "max_retries"),
    ({"windows": 8}, "top level", "window"),
    ({"workers": [{"type": "threads", "cout": 2}]}, "workers[0]", "count"),
    ({"workers": [{"type": "multicore", "core": 2}]}, "workers[0]", "cores"),
    ({"workers": [{"typ": "threads"}, {"type": "threads"}]}, "workers[0].type", "type"),
    ({"workers": [{"type": "thread"}]}, "workers[0].type", "threads"),
])
def test_a_mistyped_key_or_type_gets_the_closest_valid_one(tmp_path, content, path, suggestion):
    path_ = write(tmp_path / "pydron.conf", content)
    with pytest.raises(ConfigError) as info:
        load_config(path_)
    message = str(info.value)
    assert f"{path_}: {path}: expected " in message, message
    assert message.endswith(f'(did you mean "{suggestion}"?)'), message


def test_no_suggestion_when_nothing_is_close(tmp_path):
    message = check_error(tmp_path, {"workers": [{"type": "threads", "zzz": 1}]},
                          "workers[0]", 'unknown key "zzz"', "only the keys")
    assert "did you mean" not in message


def test_every_problem_is_listed_in_one_error(tmp_path):
    path = write(tmp_path / "pydron.conf", {
        "workers": [{"type": "threads", "count": "four"}, {"type": "inline", "count": 2}],
        "max_retries": -1, "windw": 3})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).splitlines() == [
        f"{path}: top level: expected only the keys {config._quoted(config._TOP_LEVEL)}, "
        'found unknown key "windw" (did you mean "window"?)',
        f'{path}: workers[0].count: expected an integer from 1 to 1024, found "four"',
        f'{path}: workers[1]: expected only the keys "type" for type "inline", found '
        'unknown key "count"',
        f"{path}: max_retries: expected an integer from 0 to 100, found -1",
    ]


@pytest.mark.parametrize("key, value, found, expected", [
    ("max_retries", -1, "-1", "an integer from 0 to 100"),
    ("max_retries", "3", '"3"', "an integer from 0 to 100"),
    ("window", 0, "0", "an integer from 1 to 1000000"),
    ("window", 1.5, "1.5", "an integer from 1 to 1000000"),
    ("window", False, "false", "an integer from 1 to 1000000"),
])
def test_bad_top_level_values(tmp_path, key, value, found, expected):
    check_error(tmp_path, {key: value}, key, found, expected)


def test_long_values_are_shortened(tmp_path):
    message = check_error(tmp_path, {"window": "x" * 500}, "window", '"xxx',
                          "an integer from 1 to 1000000")
    assert len(message) < len(str(tmp_path)) + 150


def test_json_syntax_error_has_line_and_column(tmp_path):
    path = write(tmp_path / "pydron.conf",
                 '{\n  "workers": [\n    {"type": "threads" "count": 2}\n  ]\n}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: line 3, column 24: invalid JSON"), message
    assert "delimiter" in message


def test_empty_file_is_a_syntax_error(tmp_path):
    path = write(tmp_path / "pydron.conf", "")
    with pytest.raises(ConfigError, match=r"line 1, column 1: invalid JSON"):
        load_config(path)


def test_unreadable_file_names_the_file(tmp_path):
    path = tmp_path / "pydron.conf"
    path.write_bytes(b'{"window": "\xff"}')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: cannot read the file")


def test_directory_instead_of_file(places):
    (places["cwd"] / "pydron.conf").mkdir()
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config()


def test_parse_config_errors_name_the_source():
    with pytest.raises(ConfigError, match=r'^<dict>: workers\[0\]\.count: expected an integer'):
        parse_config({"workers": [{"type": "threads", "count": 0}]})
    with pytest.raises(ConfigError, match=r"^mine: top level: "):
        parse_config([], "mine")


# --------------------------------------------------------------------------- upper bounds


@pytest.mark.parametrize("content, key_path, found, expected", [
    ({"max_retries": 10**9}, "max_retries", "1000000000", "an integer from 0 to 100"),
    ({"max_retries": 101}, "max_retries", "101", "an integer from 0 to 100"),
    ({"window": 10**12}, "window", "1000000000000", "an integer from 1 to 1000000"),
    ({"workers": [{"type": "threads", "count": 1025}]}, "workers[0].count", "1025",
     "an integer from 1 to 1024"),
    ({"workers": [{"type": "multicore", "cores": 1000000}]}, "workers[0].cores", "1000000",
     "an integer from 1 to 1024"),
    ({"workers": [{"type": "ssh", "hostname": "h", "cores": 5000}]}, "workers[0].cores",
     "5000", "an integer from 1 to 1024"),
    ({"workers": [{"type": "cloud", "provider": "dummy", "image": "i", "size": "s",
                   "count": 10**6}]}, "workers[0].count", "1000000",
     "an integer from 1 to 1000"),
    ({"workers": [{"type": "cloud", "provider": "dummy", "image": "i", "size": "s",
                   "cores": 2048}]}, "workers[0].cores", "2048",
     "an integer from 1 to 1024"),
    ({"workers": [{"type": "cloud", "provider": "dummy", "image": "i", "size": "s",
                   "idle_timeout": 1e12}]}, "workers[0].idle_timeout", "1000000000000.0",
     "a number of seconds from 0 to 2592000"),
    ({"workers": [{"type": "cloud", "provider": "dummy", "image": "i", "size": "s",
                   "ready_timeout": 0}]}, "workers[0].ready_timeout", "0",
     "a number of seconds > 0"),
    ({"workers": [{"type": "cloud", "provider": "dummy", "image": "i", "size": "s",
                   "ready_timeout": -5}]}, "workers[0].ready_timeout", "-5",
     "a number of seconds > 0"),
])
def test_absurd_values_are_refused_with_the_allowed_range(tmp_path, content, key_path,
                                                           found, expected):
    check_error(tmp_path, content, key_path, found, expected)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("key", ["idle_timeout", "ready_timeout"])
def test_durations_must_be_finite(tmp_path, key, literal):
    # Python's json module reads these non-standard literals; NaN < 0 is False, so a
    # plain "value < 0" check let NaN through.
    text = ('{"workers": [{"type": "cloud", "provider": "dummy", "image": "i", '
            f'"size": "s", "{key}": {literal}}}]}}')
    check_error(tmp_path, text, f"workers[0].{key}", literal, "a number of seconds")


def test_the_bounds_themselves_are_accepted():
    conf = parse_config({"max_retries": 100, "window": 1_000_000, "workers": [
        {"type": "multicore", "cores": 1024},
        {"type": "ssh", "hostname": "h", "cores": 1024},
        {"type": "cloud", "provider": "dummy", "image": "i", "size": "s", "count": 1000,
         "cores": 1024, "idle_timeout": 0, "ready_timeout": 30 * 24 * 3600}]})
    assert conf.max_retries == 100 and conf.window == 1_000_000
    assert [w.count for w in conf.workers] == [1024, 1024, 1000 * 1024]


def test_local_workers_are_bounded_in_all(tmp_path):
    message = check_error(
        tmp_path, {"workers": [{"type": "multicore", "cores": 1000},
                               {"type": "threads", "count": 100}]},
        "workers", "1100", "at most 1024 worker threads and processes on this machine")
    assert len(message.splitlines()) == 1


def test_every_out_of_bounds_value_is_listed_in_one_error(tmp_path):
    path = write(tmp_path / "pydron.conf", {
        "max_retries": 10**9, "window": 10**12,
        "workers": [{"type": "multicore", "cores": 1000000},
                    {"type": "threads", "count": 5000}]})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).splitlines() == [
        f"{path}: workers[0].cores: expected an integer from 1 to 1024, found 1000000",
        f"{path}: workers[1].count: expected an integer from 1 to 1024, found 5000",
        f"{path}: max_retries: expected an integer from 0 to 100, found 1000000000",
        f"{path}: window: expected an integer from 1 to 1000000, found 1000000000000",
    ]
    assert [p.path for p in info.value.problems] == [
        "workers[0].cores", "workers[1].count", "max_retries", "window"]


def test_every_numeric_key_has_an_upper_bound():
    """A new numeric key without a bound fails here: each check is probed with a huge
    value, which must be refused."""
    for kind, spec in config.WORKER_TYPES.items():
        for key, check in [*spec.keys.items(), *config._TOP_LEVEL.items()]:
            if key in ("port", "workers"):
                continue
            try:
                check(1)
            except config._Invalid:
                continue  # not a number
            with pytest.raises(config._Invalid):
                check(10**18)
            with pytest.raises(config._Invalid):
                check(float("nan"))


def test_master_timeout_is_a_key_that_reaches_the_worker_pool():
    import pydron
    import pydron.backend as backend
    pydron.configure({"workers": [{"type": "multicore", "cores": 1}], "master_timeout": 42})
    try:
        assert backend.get_pool().master_timeout == 42
    finally:
        pydron.shutdown()
        pydron.configure({"workers": [{"type": "threads", "count": 4}]})
    with pytest.raises(ConfigError, match="master_timeout"):
        pydron.configure({"workers": [{"type": "inline"}], "master_timeout": 0})
