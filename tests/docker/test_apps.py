"""The registry's own logic: grouping containers into apps, choosing volumes, reacting to events.

The Docker client is faked here only to feed inspect data; what Docker does is
covered by tests/integration.
"""

from __future__ import annotations

import docker.errors
import pytest

from sidecar.docker.apps import ContainerInfo, Registry, VolumeInfo, build_app
from sidecar.errors import AppNotFound, AppPolicyInvalid


def inspect(cid: str, name: str, project: str | None = None, labels=None, mounts=(), running=True, env=()):
    all_labels = dict(labels or {})
    if project:
        all_labels["com.docker.compose.project"] = project
        all_labels["com.docker.compose.service"] = name.split("_")[1] if "_" in name else name
    return {
        "Id": cid,
        "Name": "/" + name,
        "Config": {"Labels": all_labels, "Env": list(env)},
        "State": {"Running": running, "Status": "running" if running else "exited"},
        "Mounts": [
            {"Type": "volume", "Name": v, "Source": f"/var/lib/docker/volumes/{v}/_data", "Destination": d, "RW": True}
            for v, d in mounts
        ],
    }


def volume(name: str, key: str | None = None) -> dict:
    labels = {"com.docker.compose.volume": key} if key else {}
    return {"Name": name, "Driver": "local", "Mountpoint": f"/var/lib/docker/volumes/{name}/_data", "Labels": labels}


class FakeAPI:
    def __init__(self) -> None:
        self.containers_by_id: dict[str, dict] = {}
        self.volumes_by_name: dict[str, dict] = {}

    def containers(self, all=False):
        return [{"Id": c["Id"], "State": c["State"]["Status"]} for c in self.containers_by_id.values()]

    def inspect_container(self, cid):
        if cid not in self.containers_by_id:
            raise docker.errors.NotFound("no such container")
        return self.containers_by_id[cid]

    def volumes(self):
        return {"Volumes": list(self.volumes_by_name.values())}

    def inspect_volume(self, name):
        if name not in self.volumes_by_name:
            raise docker.errors.NotFound("no such volume")
        return self.volumes_by_name[name]


class FakeClient:
    def __init__(self) -> None:
        self.api = FakeAPI()

    def add(self, attrs: dict) -> None:
        self.api.containers_by_id[attrs["Id"]] = attrs


def test_container_info_reads_project_service_mounts_and_app_name():
    info = ContainerInfo.from_inspect(
        inspect("c1", "blog_web_1", "blog", mounts=[("blog_html", "/var/www")], env=["A=1", "W9_APP_NAME=My Blog"])
    )
    assert (info.app_id, info.service, info.app_name, info.running) == ("blog", "web", "My Blog", True)
    assert [(m.volume, m.destination) for m in info.mounts] == [("blog_html", "/var/www")]
    plain = ContainerInfo.from_inspect(inspect("c2", "standalone"))
    assert plain.app_id == "standalone" and plain.app_name is None


def _app(*attrs, volumes=()):
    infos = [ContainerInfo.from_inspect(a) for a in attrs]
    vols = {v["Name"]: VolumeInfo.from_inspect(v) for v in volumes}
    return build_app(infos[0].app_id, infos, vols)


def test_backup_volumes_skip_database_data_unless_named():
    web = inspect("c1", "blog_web_1", "blog", mounts=[("blog_html", "/var/www")])
    db = inspect(
        "c2", "blog_db_1", "blog", labels={"websoft9.backup.db": "mysql"}, mounts=[("blog_dbdata", "/var/lib/mysql")]
    )
    vols = [volume("blog_html", "html"), volume("blog_dbdata", "dbdata")]
    app = _app(web, db, volumes=vols)
    assert app.app_name == "blog"
    assert [v.key for v in app.volumes] == ["dbdata", "html"]
    assert [v.key for v in app.backup_volumes()] == ["html"]
    assert app.db_volume_names() == {"blog_dbdata"}

    db["Config"]["Labels"]["websoft9.backup.volumes"] = "html,dbdata"
    named = _app(web, db, volumes=vols)
    assert [v.key for v in named.backup_volumes()] == ["html", "dbdata"]

    db["Config"]["Labels"]["websoft9.backup.volumes"] = "html,uploads"
    with pytest.raises(AppPolicyInvalid, match=r"names uploads, which the app's containers do not mount.*dbdata, html"):
        _app(web, db, volumes=vols).backup_volumes()


def test_mounts_of_prefers_read_write_and_running_containers():
    a = inspect("c1", "x_a_1", "x", mounts=[("x_v", "/a")], running=False)
    b = inspect("c2", "x_b_1", "x", mounts=[("x_v", "/b")])
    c = inspect("c3", "x_c_1", "x", mounts=[("x_v", "/c")])
    c["Mounts"][0]["RW"] = False
    app = _app(a, b, c, volumes=[volume("x_v", "v")])
    assert [cm[0].name for cm in app.mounts_of("x_v")] == ["x_b_1", "x_a_1", "x_c_1"]


def test_registry_follows_events_and_merges_labels_of_all_containers():
    client = FakeClient()
    client.api.volumes_by_name["shop_data"] = volume("shop_data", "data")
    client.add(inspect("c1", "shop_web_1", "shop", labels={"websoft9.backup.schedule": "@daily"}))
    reg = Registry(log_changes=False)
    seen = []
    reg.listeners.append(lambda app_id, app: seen.append((app_id, app is not None)))
    reg.inventory(client)
    assert reg.require("shop").policy.schedule == "@daily"

    # a second container with a conflicting schedule: the app gets an error
    client.add(inspect("c2", "shop_worker_1", "shop", labels={"websoft9.backup.schedule": "@hourly"}))
    reg.handle_event(client, {"id": "c2", "Action": "create"})
    app = reg.require("shop")
    assert len(app.containers) == 2 and not app.policy.valid
    assert "conflicting" in app.policy.errors[0].why

    # re-created with the same value: fine again; a new volume is looked up on the way
    client.api.containers_by_id.pop("c2")
    reg.handle_event(client, {"id": "c2", "Action": "destroy"})
    client.add(
        inspect(
            "c3", "shop_worker_1", "shop", labels={"websoft9.backup.schedule": "@daily"}, mounts=[("shop_data", "/d")]
        )
    )
    reg.handle_event(client, {"id": "c3", "Action": "start"})
    app = reg.require("shop")
    assert app.policy.valid and [v.key for v in app.volumes] == ["data"]

    # a container that vanished before its event was handled is dropped
    client.api.containers_by_id.clear()
    reg.handle_event(client, {"id": "c1", "Action": "die"})
    reg.handle_event(client, {"id": "c3", "Action": "die"})
    assert reg.get("shop") is None
    with pytest.raises(AppNotFound, match="shop"):
        reg.require("shop")
    assert seen[0] == ("shop", True) and seen[-1] == ("shop", False)


def test_registry_inventory_replaces_what_it_knew():
    client = FakeClient()
    client.add(inspect("c1", "a_web_1", "a"))
    client.add(inspect("c2", "b_web_1", "b"))
    reg = Registry(log_changes=False)
    reg.inventory(client)
    assert [a.app_id for a in reg.apps()] == ["a", "b"]
    generation = reg.generation
    del client.api.containers_by_id["c1"]
    client.api.containers_by_id["c2"]["State"] = {"Running": False, "Status": "exited"}
    reg.inventory(client)
    assert [a.app_id for a in reg.apps()] == ["b"]
    assert reg.require("b").containers[0].running is False
    assert reg.generation > generation
    assert reg.wait_for(lambda r: r.get("a") is None, 0.1)
    assert not reg.wait_for(lambda r: r.get("a") is not None, 0.1)
