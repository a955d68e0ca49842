"""Backup policy from Docker labels (DESIGN.md §4): sidecar.labels."""

from __future__ import annotations

import json

import pytest

from sidecar.labels import (
    DB_ENGINES,
    HOOK_PHASES,
    LABEL_PREFIX,
    AppPolicy,
    DbSpec,
    Hook,
    LabelError,
    Retention,
    parse_duration,
    parse_labels,
    parse_retention,
)

P = LABEL_PREFIX


def one(labels: dict[str, str], container: str = "app") -> AppPolicy:
    """The policy of an app with one container carrying `labels` (keys without the prefix)."""
    return parse_labels({container: {P + key: value for key, value in labels.items()}})


def hook(phase: str, command: str = "echo hi", **kw) -> Hook:
    defaults = {"user": None, "timeout_s": 300.0, "on_error": "fail" if phase in ("pre", "restore.pre") else "continue"}
    return Hook(phase=phase, container="app", command=command, **{**defaults, **kw})


# -- one case per row of the label table: valid value -> policy field ------------------------------------------

VALID = [
    # enable
    ({"enable": "true"}, lambda p: p.enabled, True),
    ({"enable": "TRUE"}, lambda p: p.enabled, True),
    ({"enable": "False"}, lambda p: p.enabled, False),
    ({"schedule": "@daily"}, lambda p: p.enabled, True),  # any websoft9.backup.* label enables
    # schedule
    ({"schedule": "0 3 * * *"}, lambda p: p.schedule, "0 3 * * *"),
    ({"schedule": "  */15  2-5 * * mon-fri "}, lambda p: p.schedule, "*/15 2-5 * * mon-fri"),
    ({"schedule": "@hourly"}, lambda p: p.schedule, "@hourly"),
    ({"schedule": "@daily"}, lambda p: p.schedule, "@daily"),
    ({"schedule": "@weekly"}, lambda p: p.schedule, "@weekly"),
    ({"schedule": "@monthly"}, lambda p: p.schedule, "@monthly"),
    ({"schedule": "@yearly"}, lambda p: p.schedule, "@yearly"),
    ({"schedule": "@annually"}, lambda p: p.schedule, "@annually"),
    ({"schedule": "@midnight"}, lambda p: p.schedule, "@midnight"),
    ({"enable": "true"}, lambda p: p.schedule, None),
    # type
    ({"type": "full"}, lambda p: p.backup_type, "full"),
    ({"type": "differential"}, lambda p: p.backup_type, "differential"),
    ({"type": " incremental "}, lambda p: p.backup_type, "incremental"),
    ({"enable": "true"}, lambda p: p.backup_type, "incremental"),
    # retention
    ({"retention": "days=30"}, lambda p: p.retention, Retention(days=30)),
    (
        {"retention": "last=3, daily=7,weekly=4,monthly=6,yearly=1"},
        lambda p: p.retention,
        Retention(last=3, daily=7, weekly=4, monthly=6, yearly=1),
    ),
    ({"retention": "hourly=24"}, lambda p: p.retention, Retention(hourly=24)),
    ({"enable": "true"}, lambda p: p.retention, None),
    # storage
    ({"storage": "s3"}, lambda p: p.storage, "s3"),
    ({"storage": "nas_2-backup"}, lambda p: p.storage, "nas_2-backup"),
    ({"enable": "true"}, lambda p: p.storage, None),
    # volumes
    ({"volumes": "all"}, lambda p: p.volumes, None),
    ({"volumes": "wp_data, db-data,wp_data"}, lambda p: p.volumes, ("wp_data", "db-data")),
    ({"enable": "true"}, lambda p: p.volumes, None),
    # exclude
    ({"exclude": "cache/*, *.log,wp-content/up/**"}, lambda p: p.exclude, ("cache/*", "*.log", "wp-content/up/**")),
    ({"enable": "true"}, lambda p: p.exclude, ()),
    # stop
    ({"stop": "true"}, lambda p: p.stop, ("app",)),
    ({"stop": "false"}, lambda p: p.stop, ()),
    ({"enable": "true"}, lambda p: p.stop, ()),
    # db and db.*
    ({"db": "mysql"}, lambda p: p.databases, (DbSpec("app", "mysql", None, None, None),)),
    ({"db": "postgresql"}, lambda p: p.databases[0].engine, "postgres"),
    ({"db": "MariaDB"}, lambda p: p.databases[0].engine, "mariadb"),
    ({"db": "mongodb"}, lambda p: p.databases[0].engine, "mongodb"),
    ({"db": "redis"}, lambda p: p.databases[0].engine, "redis"),
    ({"db": "mysql", "db.user": "root"}, lambda p: p.databases[0].user, "root"),
    ({"db": "mysql", "db.password_env": "MYSQL_PWD"}, lambda p: p.databases[0].password_env, "MYSQL_PWD"),
    ({"db": "postgres", "db.databases": "wordpress, shop"}, lambda p: p.databases[0].databases, ("wordpress", "shop")),
    ({"db": "postgres", "db.databases": "all"}, lambda p: p.databases[0].databases, None),
    # hooks, with their defaults
    ({"pre": "wp maintenance-mode activate"}, lambda p: p.hooks, (hook("pre", "wp maintenance-mode activate"),)),
    ({"post": "echo hi"}, lambda p: p.hooks, (hook("post"),)),
    ({"restore.pre": "echo hi"}, lambda p: p.hooks, (hook("restore.pre"),)),
    ({"restore.post": "echo hi"}, lambda p: p.hooks, (hook("restore.post"),)),
    # hook options
    ({"pre": "x", "pre.on_error": "continue"}, lambda p: p.hooks[0].on_error, "continue"),
    ({"post": "x", "post.on_error": "FAIL"}, lambda p: p.hooks[0].on_error, "fail"),
    ({"pre": "x", "pre.timeout": "30s"}, lambda p: p.hooks[0].timeout_s, 30.0),
    ({"pre": "x", "pre.timeout": "90"}, lambda p: p.hooks[0].timeout_s, 90.0),
    ({"restore.post": "x", "restore.post.timeout": "1h30m"}, lambda p: p.hooks[0].timeout_s, 5400.0),
    ({"pre": "x", "pre.timeout": "24h"}, lambda p: p.hooks[0].timeout_s, 86400.0),
    ({"pre": "x", "pre.user": "www-data"}, lambda p: p.hooks[0].user, "www-data"),
    ({"pre": "x", "pre.user": "33"}, lambda p: p.hooks[0].user, "33"),
    ({"pre": "x", "pre.user": "33:33"}, lambda p: p.hooks[0].user, "33:33"),
    ({"restore.pre": "x", "restore.pre.user": "app:staff"}, lambda p: p.hooks[0].user, "app:staff"),
]


@pytest.mark.parametrize(("labels", "get", "expected"), VALID, ids=[repr(case[0]) for case in VALID])
def test_valid_label_sets_policy_field(labels, get, expected):
    policy = one(labels)
    assert policy.errors == ()
    assert policy.valid
    assert get(policy) == expected


# -- one case per error -----------------------------------------------------------------------------------------

ERRORS = [
    ({"enable": "yes"}, "enable", "true or false"),
    ({"enable": "1"}, "enable", "true or false"),
    ({"stop": "no"}, "stop", "true or false"),
    ({"schedule": "0 3 * *"}, "schedule", "cron"),
    ({"schedule": "0 0 3 * * *"}, "schedule", "cron"),
    ({"schedule": "61 3 * * *"}, "schedule", "cron"),
    ({"schedule": "@reboot"}, "schedule", "cron"),
    ({"schedule": "\uff10 3 * * *"}, "schedule", "cron"),  # fullwidth digit
    ({"schedule": "daily"}, "schedule", "cron"),
    ({"schedule": ""}, "schedule", "cron"),
    ({"type": "snapshot"}, "type", "incremental, full, differential"),
    ({"retention": "weeks=4"}, "retention", "unknown retention key"),
    ({"retention": "days=0"}, "retention", "positive integer"),
    ({"retention": "days=-3"}, "retention", "positive integer"),
    ({"retention": "days=1.5"}, "retention", "positive integer"),
    ({"retention": "days=many"}, "retention", "positive integer"),
    ({"retention": ""}, "retention", "empty"),
    ({"retention": "daily=7,,weekly=4"}, "retention", "key=count"),
    ({"retention": "daily=7,daily=8"}, "retention", "twice"),
    ({"retention": "30"}, "retention", "key=count"),
    ({"storage": "My-S3"}, "storage", "repository name"),
    ({"storage": "-s3"}, "storage", "repository name"),
    ({"storage": "s3/bucket"}, "storage", "repository name"),
    ({"volumes": "data,,db"}, "volumes", "empty"),
    ({"volumes": "/var/lib/mysql"}, "volumes", "volume name"),
    ({"exclude": "/var/cache/*"}, "exclude", "relative"),
    ({"exclude": "cache/../../etc"}, "exclude", ".."),
    ({"exclude": "..,tmp"}, "exclude", ".."),
    ({"db": "oracle"}, "db", "mysql, mariadb"),
    ({"db.user": "root"}, "db.user", "needs websoft9.backup.db"),
    ({"db.databases": "wp"}, "db.databases", "needs websoft9.backup.db"),
    ({"db.password_env": "MYSQL_PASSWORD"}, "db.password_env", "needs websoft9.backup.db"),
    ({"db": "mysql", "db.password_env": "1PASSWORD"}, "db.password_env", "environment variable"),
    ({"db": "mysql", "db.password_env": "MY-PASS"}, "db.password_env", "environment variable"),
    ({"db": "mysql", "db.user": "  "}, "db.user", "empty"),
    ({"db": "mysql", "db.databases": "a, ,b"}, "db.databases", "empty"),
    ({"pre.timeout": "30s"}, "pre.timeout", "needs the hook command"),
    ({"post.user": "root"}, "post.user", "needs the hook command"),
    ({"restore.pre.on_error": "continue"}, "restore.pre.on_error", "needs the hook command"),
    ({"pre": ""}, "pre", "empty hook command"),
    ({"restore.post": "   "}, "restore.post", "empty hook command"),
    ({"pre": "x", "pre.timeout": "0"}, "pre.timeout", "more than 0"),
    ({"pre": "x", "pre.timeout": "0s"}, "pre.timeout", "more than 0"),
    ({"pre": "x", "pre.timeout": "25h"}, "pre.timeout", "at most 24h"),
    ({"pre": "x", "pre.timeout": "24h1s"}, "pre.timeout", "at most 24h"),
    ({"pre": "x", "pre.timeout": "soon"}, "pre.timeout", "not a duration"),
    ({"pre": "x", "pre.timeout": "-5s"}, "pre.timeout", "not a duration"),
    ({"pre": "x", "pre.timeout": "5 m"}, "pre.timeout", "not a duration"),
    ({"post": "x", "post.on_error": "ignore"}, "post.on_error", "fail, continue"),
    ({"pre": "x", "pre.user": "root user"}, "pre.user", "not a user"),
    ({"pre": "x", "pre.user": "a:b:c"}, "pre.user", "not a user"),
    ({"schedul": "0 3 * * *"}, "schedul", "did you mean websoft9.backup.schedule?"),
    ({"retension": "days=3"}, "retension", "did you mean websoft9.backup.retention?"),
    ({"Schedule": "@daily"}, "Schedule", "did you mean websoft9.backup.schedule?"),
    ({"pre.timout": "5m"}, "pre.timout", "did you mean websoft9.backup.pre.timeout?"),
    ({"frobnicate": "1"}, "frobnicate", "unknown label"),
    ({"": "x"}, "", "unknown label"),
]


@pytest.mark.parametrize(("labels", "bad_key", "why"), ERRORS, ids=[repr(case[0]) for case in ERRORS])
def test_error(labels, bad_key, why):
    policy = one(labels)
    assert not policy.valid
    assert not policy.managed
    assert [error.key for error in policy.errors] == [P + bad_key]
    error = policy.errors[0]
    assert why in error.why
    assert error.container == "app"
    assert error.value in (labels[bad_key], "<hidden>")


def test_unknown_label_without_close_match_has_no_suggestion():
    (error,) = one({"frobnicate": "1"}).errors
    assert error.why == "unknown label"


def test_unknown_label_still_marks_app_as_backup_app():
    policy = one({"schedul": "@daily"})
    assert policy.enabled
    assert not policy.managed  # a typo must not silently leave the app unscheduled and "fine"


def test_conflicting_app_wide_values_name_key_values_and_containers():
    policy = parse_labels(
        {
            "wordpress": {P + "schedule": "0 3 * * *"},
            "mysql": {P + "schedule": "0 4 * * *"},
            "nginx": {P + "schedule": " 0 3 * * * "},
        }
    )
    (error,) = policy.errors
    assert error.key == P + "schedule"
    assert error.container is None
    assert "'0 3 * * *' on nginx, wordpress" in error.why
    assert "'0 4 * * *' on mysql" in error.why
    assert policy.schedule is None
    assert not policy.managed


def test_identical_app_wide_values_on_several_containers_merge():
    policy = parse_labels(
        {
            "wordpress": {P + "schedule": "0 3 * * *", P + "retention": "days=7"},
            "mysql": {P + "schedule": "0 3 * * * ", P + "db": "mysql"},
        }
    )
    assert policy.errors == ()
    assert policy.managed
    assert policy.schedule == "0 3 * * *"
    assert policy.retention == Retention(days=7)
    assert policy.db_containers() == frozenset({"mysql"})


def test_invalid_value_shared_by_containers_reports_no_single_container():
    policy = parse_labels({"a": {P + "type": "snap"}, "b": {P + "type": "snap"}})
    (error,) = policy.errors
    assert (error.key, error.value, error.container) == (P + "type", "snap", None)


def test_no_labels_is_not_a_backup_app():
    for containers in ({}, {"web": {}}, {"web": {"com.docker.compose.project": "wp", "websoft9.backupx": "1"}}):
        policy = parse_labels(containers)
        assert policy == AppPolicy()
        assert not policy.enabled
        assert policy.valid


def test_keys_are_case_sensitive_for_the_prefix():
    assert parse_labels({"web": {"Websoft9.Backup.enable": "true"}}) == AppPolicy()


def test_enable_false_with_other_labels_disables():
    policy = one({"enable": "false", "schedule": "@daily", "db": "mysql"})
    assert policy.valid
    assert not policy.enabled
    assert not policy.managed
    assert policy.schedule == "@daily"  # still parsed, for display


def test_hook_defaults():
    policy = parse_labels({"web": {P + phase: f"run {phase}" for phase in HOOK_PHASES}})
    assert [(h.phase, h.on_error, h.timeout_s, h.user) for h in policy.hooks] == [
        ("pre", "fail", 300.0, None),
        ("post", "continue", 300.0, None),
        ("restore.pre", "fail", 300.0, None),
        ("restore.post", "continue", 300.0, None),
    ]


def test_per_container_keys_belong_to_their_container_and_sort():
    policy = parse_labels(
        {
            "worker": {P + "stop": "true", P + "post": "wake", P + "pre": "sleep"},
            "db2": {P + "db": "postgres", P + "db.user": "pg"},
            "app": {P + "stop": "TRUE", P + "pre": "flush", P + "db": "redis"},
        }
    )
    assert policy.errors == ()
    assert policy.stop == ("app", "worker")
    assert [(db.container, db.engine, db.user) for db in policy.databases] == [
        ("app", "redis", None),
        ("db2", "postgres", "pg"),
    ]
    assert [(h.phase, h.container, h.command) for h in policy.hooks] == [
        ("pre", "app", "flush"),
        ("pre", "worker", "sleep"),
        ("post", "worker", "wake"),
    ]
    assert [h.container for h in policy.hooks_for("pre")] == ["app", "worker"]
    assert policy.hooks_for("restore.pre") == ()
    assert policy.db_containers() == frozenset({"app", "db2"})


def test_hooks_for_rejects_unknown_phase():
    with pytest.raises(ValueError, match="unknown hook phase"):
        AppPolicy().hooks_for("during")


def test_db_options_need_db_on_the_same_container():
    policy = parse_labels({"mysql": {P + "db": "mysql"}, "web": {P + "db.user": "root"}})
    (error,) = policy.errors
    assert (error.key, error.container) == (P + "db.user", "web")
    assert policy.databases == (DbSpec("mysql", "mysql", None, None, None),)


def test_hook_options_need_the_hook_on_the_same_container():
    policy = parse_labels({"a": {P + "pre": "x"}, "b": {P + "pre.timeout": "1m"}})
    (error,) = policy.errors
    assert (error.key, error.container) == (P + "pre.timeout", "b")
    assert [h.container for h in policy.hooks] == ["a"]


def test_bad_db_engine_does_not_also_blame_its_options():
    policy = one({"db": "oracle", "db.user": "sys"})
    assert [error.key for error in policy.errors] == [P + "db"]
    assert policy.databases == ()


def test_errors_never_stop_other_keys_from_parsing():
    policy = parse_labels(
        {
            "web": {
                P + "schedule": "0 3 * *",
                P + "type": "full",
                P + "retention": "days=0",
                P + "storage": "s3",
                P + "exclude": "/abs",
                P + "volumes": "data",
                P + "pre": "x",
                P + "pre.timeout": "forever",
                P + "stop": "true",
                P + "bogus": "1",
            },
            "db": {P + "db": "mysql", P + "db.password_env": "bad name", P + "db.user": "root"},
        }
    )
    assert {error.key for error in policy.errors} == {
        P + "schedule",
        P + "retention",
        P + "exclude",
        P + "pre.timeout",
        P + "bogus",
        P + "db.password_env",
    }
    assert policy.enabled and not policy.valid and not policy.managed
    assert (policy.backup_type, policy.storage, policy.volumes, policy.stop) == ("full", "s3", ("data",), ("web",))
    assert policy.schedule is None and policy.retention is None and policy.exclude == ()
    assert policy.hooks == (Hook("pre", "web", "x", None, 300.0, "fail"),)
    assert policy.databases == (DbSpec("db", "mysql", "root", None, None),)


def test_password_never_appears_in_errors_or_policy():
    secret = "S3cr3t!pa55"
    policy = parse_labels(
        {
            "db": {P + "db": "mysql", P + "db.password_env": secret},
            "web": {P + "db.password": secret, P + "db.password_env": secret},
        }
    )
    assert len(policy.errors) == 4  # web db.password_env: both a bad name and missing db
    dumped = json.dumps(policy.to_dict()) + "".join(str(error) for error in policy.errors) + repr(policy)
    assert secret not in dumped
    assert "did you mean websoft9.backup.db.password_env?" in dumped


def test_label_error_str_names_key_value_and_container():
    (error,) = one({"schedule": "0 3 * *"}, container="wordpress").errors
    text = str(error)
    assert text.startswith("websoft9.backup.schedule='0 3 * *' on wordpress: ")
    assert "cron" in text
    assert str(LabelError("websoft9.backup.type", "", "conflict")) == "websoft9.backup.type: conflict"
    long = str(LabelError("k", "x" * 10_000, "too long", "c"))
    assert len(long) < 300 and long.endswith("on c: too long")


def test_to_dict_is_json_ready():
    policy = parse_labels(
        {
            "web": {P + "schedule": "@daily", P + "retention": "last=3,daily=7", P + "pre": "x", P + "volumes": "a,b"},
            "db": {P + "db": "postgres", P + "db.databases": "x,y", P + "foo": "1"},
        }
    )
    data = json.loads(json.dumps(policy.to_dict()))
    assert data["enabled"] is True and data["valid"] is False and data["managed"] is False
    assert data["retention"] == {"last": 3, "daily": 7}
    assert data["volumes"] == ["a", "b"]
    assert data["databases"] == [
        {"container": "db", "engine": "postgres", "user": None, "password_env": None, "databases": ["x", "y"]}
    ]
    assert data["hooks"] == [
        {"phase": "pre", "container": "web", "command": "x", "user": None, "timeout_s": 300.0, "on_error": "fail"}
    ]
    assert data["errors"] == [
        {"key": P + "foo", "value": "1", "why": "unknown label", "container": "db"},
    ]
    assert AppPolicy().to_dict()["retention"] is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1h30m", 5400.0), ("90", 90.0), (" 2M ", 120.0),
     ("1h1m1s", 3661.0), ("1.5m", 90.0), ("0", 0.0)],
)  # fmt: skip
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "h30", "30x", "1d", "-1", "1m1h", "inf", "nan", "1e3", "5 m", "9" * 400])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_parse_retention_and_to_dict():
    retention = parse_retention("yearly=1, last=3")
    assert retention == Retention(last=3, yearly=1)
    assert retention.to_dict() == {"last": 3, "yearly": 1}
    with pytest.raises(ValueError, match="positive integer"):
        parse_retention("days=" + "9" * 5000)
    with pytest.raises(ValueError, match="empty retention"):
        parse_retention("  ")


JUNK = [
    None,
    42,
    "websoft9.backup.enable=true",
    {"web": None},
    {"web": "websoft9.backup.enable=true"},
    {None: {P + "enable": "maybe"}},
    {1: {P + "enable": "true"}, "1": {P + "enable": "false"}},
    {"web": {P + "enable": None, P + "schedule": 5, 7: "x", None: None}},
    {"wéb": {P + "schédule": "\uff10 \uff13 * * *", P + "schedule": "\uff10 \uff13 * * *", P + "pre": "écho ☃"}},
    {"web": {P + "schedule": "1-59/1," * 20_000 + " * * * *"}},
    {"web": {P + key: "x" * 100_000 for key in ("schedule", "type", "retention", "storage", "volumes", "exclude")}},
    {"web": {P + "x" * 100_000: "y"}},
    {"web": {P + "pre": "x", P + "pre.timeout": "9" * 5000 + "h", P + "pre.user": "\x00"}},
    {"web": {P + "retention": "days=" + "9" * 5000, P + "db": "\udcff", P + "db.databases": ","}},
    {"web": {P + "exclude": "\x00", P + "volumes": "\n", P + "stop": "\t"}},
    {"web": {P + ".": ".", P + "..": "", P + "db.": "", P + "pre.": "", P + "restore": "x"}},
]


@pytest.mark.parametrize("containers", JUNK, ids=range(len(JUNK)))
def test_parse_labels_never_raises(containers):
    policy = parse_labels(containers)
    assert isinstance(policy, AppPolicy)
    assert all(isinstance(error, LabelError) and error.why for error in policy.errors)
    json.dumps(policy.to_dict())
    for error in policy.errors:
        assert str(error).startswith(error.key)
    if not isinstance(containers, dict) or not containers:
        assert not policy.managed


def test_junk_with_backup_labels_is_never_managed():
    for containers in JUNK[3:]:
        policy = parse_labels(containers)
        assert not policy.managed, containers


def test_all_engines_are_accepted():
    for engine in DB_ENGINES:
        assert one({"db": engine}).databases[0].engine == engine
