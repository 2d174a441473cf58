"""Ansible INI/YAML and CSV parsing, and the exports, without a database."""

from __future__ import annotations

import textwrap

import pytest

from opsconductor_targets.export import ExportRow, to_csv, to_ini, to_yaml
from opsconductor_targets.inventory import (
    HostSpec,
    InventoryError,
    detect_format,
    expand_pattern,
    parse,
)

INI = textwrap.dedent("""\
    # a comment
    bastion ansible_host=203.0.113.5 ansible_user=ops

    [web]
    web[01:03].example.com ansible_port=2222

    [db]
    db1 ansible_host=10.0.0.21 ansible_user="postgres admin"

    [windows]
    win1 ansible_host=10.0.0.30 ansible_password='W1n-Secret pw'

    [windows:vars]
    ansible_connection=winrm
    ansible_winrm_transport=ntlm
    ansible_winrm_server_cert_validation=ignore
    ansible_user=Administrator

    [prod:children]
    web
    db

    [prod:vars]
    ansible_user=deploy
    ansible_port=22
    """)

YAML = textwrap.dedent("""\
    all:
      vars:
        ansible_user: root
      hosts:
        bastion:
          ansible_host: 203.0.113.5
      children:
        prod:
          vars:
            ansible_user: deploy
          children:
            web:
              hosts:
                web[1:2]:
                  ansible_port: 2222
            db:
              hosts:
                db1:
                  ansible_host: 10.0.0.21
                  ansible_user: postgres
        windows:
          hosts:
            win1:
              ansible_host: 10.0.0.30
              ansible_connection: winrm
              ansible_winrm_scheme: https
              ansible_password: W1n-Secret
    """)


def by_name(specs: list[HostSpec]) -> dict[str, HostSpec]:
    return {s.name: s for s in specs}


class TestIni:
    def test_groups_become_tags_and_vars_merge_outside_in(self) -> None:
        specs, _ = parse(INI, "ini")
        hosts = by_name(specs)
        assert list(hosts) == ["bastion", "web01.example.com", "web02.example.com",
                               "web03.example.com", "db1", "win1"]
        web = hosts["web02.example.com"]
        assert (web.host, web.port, web.username, web.protocol) == (
            "web02.example.com", "2222", "deploy", "ssh")
        assert web.tags == ["prod", "web"]
        db = hosts["db1"]
        assert (db.host, db.username, db.tags) == ("10.0.0.21", "postgres admin", ["db", "prod"])
        bastion = hosts["bastion"]
        assert (bastion.host, bastion.username, bastion.tags) == ("203.0.113.5", "ops", [])
        win = hosts["win1"]
        assert (win.protocol, win.username, win.winrm_transport, win.winrm_verify_tls) == (
            "winrm", "Administrator", "ntlm", False)
        assert win.password == "W1n-Secret pw"
        assert "W1n" not in repr(win)

    @pytest.mark.parametrize(("text", "where"), [
        ("[web\nhost1\n", "line 1"),
        ("[web:nonsense]\nhost1\n", "line 1"),
        ("host1 ansible_port\n", "line 1"),
        ("host1 ansible_user='unbalanced\n", "line 1"),
        ("[g:vars]\nnot a pair\n", "line 2"),
        ("web[09:zz]\n", "line 1"),
    ])
    def test_errors_name_the_line(self, text: str, where: str) -> None:
        with pytest.raises(InventoryError) as info:
            parse(text, "ini")
        assert where in info.value.errors

    def test_too_many_hosts(self) -> None:
        with pytest.raises(InventoryError):
            parse("h[0:99]\n", "ini", max_hosts=50)

    def test_ranges(self) -> None:
        assert expand_pattern("n[08:10].x") == ["n08.x", "n09.x", "n10.x"]
        assert expand_pattern("db-[a:c]") == ["db-a", "db-b", "db-c"]
        assert expand_pattern("h[0:10:5]") == ["h0", "h5", "h10"]
        assert expand_pattern("r[1:2]c[1:2]") == ["r1c1", "r1c2", "r2c1", "r2c2"]


class TestYaml:
    def test_same_meaning_as_ini(self) -> None:
        specs, _ = parse(YAML, "yaml")
        hosts = by_name(specs)
        assert set(hosts) == {"bastion", "web1", "web2", "db1", "win1"}
        assert (hosts["web1"].username, hosts["web1"].port, hosts["web1"].tags) == (
            "deploy", 2222, ["prod", "web"])
        assert (hosts["db1"].username, hosts["db1"].host) == ("postgres", "10.0.0.21")
        assert hosts["bastion"].username == "root"
        assert (hosts["win1"].protocol, hosts["win1"].winrm_scheme) == ("winrm", "https")

    def test_aliases_that_loop_do_not_hang(self) -> None:
        text = "all:\n  children:\n    a: &a\n      hosts: {h1: null}\n      children:\n        b: *a\n"
        specs, _ = parse(text, "yaml")
        assert [s.name for s in specs] == ["h1"]

    @pytest.mark.parametrize("text", ["- a\n- b\n", "all: [1, 2]\n", "all:\n  hosts: [h]\n",
                                      "all:\n  colour: red\n", "all: {hosts: {h: 5}}\n", ": :\n"])
    def test_malformed(self, text: str) -> None:
        with pytest.raises(InventoryError):
            parse(text, "yaml")

    def test_key_files_are_not_imported_but_said(self) -> None:
        specs, warnings = parse("all:\n  hosts:\n    h1:\n      ansible_ssh_private_key_file: "
                                "~/.ssh/id\n", "yaml")
        assert [s.name for s in specs] == ["h1"]
        assert warnings and "h1" in warnings[0]


class TestCsv:
    def test_columns(self) -> None:
        text = ("name,host,port,protocol,username,tags,password\n"
                "web1,10.0.0.1,,ssh,deploy,web;prod,\n"
                "win1,10.0.0.2,5986,winrm,Administrator,win,Secret-1\n")
        specs, _ = parse(text, "csv")
        web, win = specs
        assert (web.port, web.tags, web.password) == (None, ["web", "prod"], None)
        assert (win.protocol, win.port, win.password) == ("winrm", "5986", "Secret-1")

    def test_absent_columns_mean_keep(self) -> None:
        specs, _ = parse("name,host\nweb1,10.0.0.1\n", "csv")
        assert (specs[0].tags, specs[0].protocol, specs[0].username) == (None, None, None)

    @pytest.mark.parametrize(("text", "where"), [
        ("host\n10.0.0.1\n", "line 1"),
        ("name,colour\nweb1,red\n", "line 1"),
        ("name,host\nweb1,10.0.0.1\nWEB1,10.0.0.2\n", "line 3"),
        ("name,host\nweb1,10.0.0.1,extra\n", "line 2"),
    ])
    def test_errors(self, text: str, where: str) -> None:
        with pytest.raises(InventoryError) as info:
            parse(text, "csv")
        assert where in info.value.errors


class TestDetect:
    @pytest.mark.parametrize(("text", "ctype", "fmt"), [
        (INI, None, "ini"), (YAML, None, "yaml"), ("name,host\nx,y\n", None, "csv"),
        ("whatever", "text/csv", "csv"), ("whatever", "application/yaml; charset=utf-8", "yaml"),
        ("---\nall: {}\n", None, "yaml"),
    ])
    def test_detect(self, text: str, ctype: str | None, fmt: str) -> None:
        assert detect_format(text, ctype) == fmt


ROWS = [
    ExportRow("web1", "10.0.0.1", 22, "ssh", "deploy", ["prod", "web"], "linux", "front end",
              None, None, None, "SHA256:" + "A" * 43),
    ExportRow("win1", "10.0.0.2", 5986, "winrm", "Administrator", ["win"], None, "",
              "basic", "https", False, None),
    ExportRow("10.0.0.3", "10.0.0.3", 2200, "ssh", "root", [], None, "", None, None, None, None),
]


class TestExport:
    @pytest.mark.parametrize(("render", "fmt"), [(to_csv, "csv"), (to_yaml, "yaml"),
                                                 (to_ini, "ini")])
    def test_round_trip(self, render: object, fmt: str) -> None:
        text = render(ROWS)  # type: ignore[operator]
        specs, _ = parse(text, fmt)
        hosts = by_name(specs)
        assert set(hosts) == {"web1", "win1", "10.0.0.3"}
        web, win, bare = hosts["web1"], hosts["win1"], hosts["10.0.0.3"]
        assert (web.host, int(web.port or 0), web.username, web.tags, web.os,
                web.description) == ("10.0.0.1", 22, "deploy", ["prod", "web"], "linux",
                                     "front end")
        assert (win.protocol, win.winrm_transport, win.winrm_scheme, win.winrm_verify_tls) == (
            "winrm", "basic", "https", False)
        assert (bare.host, int(bare.port or 0)) == ("10.0.0.3", 2200)
        assert all(s.password is None for s in specs)
