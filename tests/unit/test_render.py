"""Rendered configs are checked by the real nginx (-t), not by string matching alone."""

from catalog.routing import Pool, Route
from proxy_reloader.nginx import Nginx, NginxError
from proxy_reloader.render import render

import pytest


def nginx_t(tmp_path, text):
    nginx = Nginx(str(tmp_path))
    return nginx.validate(text)


def test_services_with_and_without_instances_and_a_canary_pass_nginx_t(tmp_path):
    routes = [Route("demo", "/demo/", "", Pool("v2", (("127.0.0.1", 32768), ("127.0.0.1", 32769))),
                    Pool("v3", (("127.0.0.1", 32770),)), 20),
              Route("empty", "/empty/", "", None),
              Route("hosted", "/", "api.example.com", Pool("v1", (("127.0.0.1", 1),)))]
    text = render(routes, str(tmp_path), "127.0.0.1:18999")
    assert nginx_t(tmp_path, text).exists()
    assert "server 127.0.0.1:32769" in text and "20% canary" in text
    assert 'return 503' in text and "no admitted instance of service empty" in text
    assert "upstream empty" not in text          # never an empty upstream


def test_rendering_is_deterministic(tmp_path):
    routes = [Route("b", "/b/", "", None), Route("a", "/a/", "", Pool("v1", (("127.0.0.1", 1),)))]
    assert render(routes, "/p", "127.0.0.1:1") == render(list(reversed(routes)), "/p", "127.0.0.1:1")


def test_a_config_nginx_refuses_raises_and_leaves_the_live_one(tmp_path):
    nginx = Nginx(str(tmp_path))
    good = render([], str(tmp_path), "127.0.0.1:18999")
    nginx.apply(good)
    with pytest.raises(NginxError) as err:
        nginx.apply(good.replace("events {", "events { bogus_directive 1;"))
    assert "bogus_directive" in str(err.value)
    assert nginx.current() == good
    assert not list(tmp_path.glob(".nginx.conf.*.tmp"))


@pytest.mark.parametrize("weight", [0, 1, 50, 99, 100])
def test_every_canary_weight_renders_a_config_nginx_accepts(tmp_path, weight):
    route = Route("demo", "/demo/", "", Pool("v1", (("127.0.0.1", 1),)), Pool("v2", (("127.0.0.1", 2),)), weight)
    text = render([route], str(tmp_path), "127.0.0.1:18999")
    nginx_t(tmp_path, text)
    assert ("split_clients" in text) == (0 < weight < 100)


def test_strip_prefix_rewrites_only_its_own_route_and_passes_nginx_t(tmp_path, mode="reload"):
    from proxy_reloader.nginx import Nginx as N
    from proxy_reloader.render import Settings
    routes = [Route("uxp", "/ux.p/", "", Pool("v1", (("127.0.0.1", 1),)), strip_prefix=True),
              Route("keep", "/keep/", "", Pool("v1", (("127.0.0.1", 2),)))]
    nginx = N(str(tmp_path))
    (tmp_path / "admin").mkdir()
    (tmp_path / "admin" / "secret").write_text("s")
    text = render(routes, str(tmp_path), "127.0.0.1:18999",
                  settings=Settings(str(tmp_path), "127.0.0.1:18999", mode=mode, modules=nginx.modules_path()))
    assert text.count("rewrite ") == 1 and r"rewrite ^/ux\.p/(.*)$ /$1 break;" in text
    assert nginx.validate(text).exists()


@pytest.mark.parametrize("mode", ["reload", "dynamic"])
def test_the_read_timeout_is_the_one_given_and_nginx_accepts_it(tmp_path, mode):
    from proxy_reloader.render import Settings
    routes = [Route("demo", "/demo/", "", Pool("v1", (("127.0.0.1", 1),)))]
    default = render(routes, str(tmp_path), "127.0.0.1:18999", settings=Settings(str(tmp_path), "127.0.0.1:18999", mode=mode))
    short = render(routes, str(tmp_path), "127.0.0.1:18999",
                   settings=Settings(str(tmp_path), "127.0.0.1:18999", mode=mode, read_timeout="3s"))
    assert "proxy_read_timeout 30s;" in default and "proxy_read_timeout 3s;" in short
    # retries are bounded by their number, not by a time that a long read timeout would use up
    assert "proxy_next_upstream_timeout 0;" in default and "proxy_next_upstream_timeout 0;" in short
    if mode == "reload":
        assert nginx_t(tmp_path, short).exists()


def test_the_dynamic_config_holds_no_route_so_no_route_change_changes_it(tmp_path):
    from proxy_reloader.nginx import Nginx as N
    from proxy_reloader.render import Settings
    settings = Settings(str(tmp_path), "127.0.0.1:18999", mode="dynamic", modules=N(str(tmp_path)).modules_path())
    one = [Route("demo", "/demo/", "", Pool("v1", (("127.0.0.1", 1),)))]
    many = one + [Route(f"s{i}", f"/s{i}/", f"s{i}.test,*.w{i}.test", None, strip_prefix=True,
                        settings=(("timeout", "5s"), ("buffering", "off"))) for i in range(50)]
    assert render(one, str(tmp_path), "127.0.0.1:18999", settings=settings) == \
        render(many, str(tmp_path), "127.0.0.1:18999", settings=settings) == \
        render([], str(tmp_path), "127.0.0.1:18999", settings=settings)
    (tmp_path / "admin").mkdir()
    assert N(str(tmp_path)).validate(render(many, str(tmp_path), "127.0.0.1:18999", settings=settings)).exists()


def test_a_build_with_other_lua_code_renders_another_config_so_nginx_reloads_to_load_it(tmp_path, monkeypatch):
    import shutil
    from proxy_reloader import render as r
    lua = tmp_path / "lua"
    shutil.copytree(r.LUA_DIR, lua)
    of_folder = r.lua_code_version.__wrapped__          # uncached: the folder is read at each render
    monkeypatch.setattr(r, "lua_code_version", lambda: of_folder(lua))
    settings = r.Settings(str(tmp_path), "127.0.0.1:18999", mode="dynamic")
    same = r.render([], str(tmp_path), "127.0.0.1:18999", settings=settings)
    assert r.config_version(same) == r.config_version(r.render([], str(tmp_path), "127.0.0.1:18999",
                                                              settings=settings)), "the same code: no reload"
    router = lua / "proxystack" / "router.lua"
    router.write_text(router.read_text() + "\n-- a later build\n")
    assert r.config_version(r.render([], str(tmp_path), "127.0.0.1:18999", settings=settings)) != \
        r.config_version(same)


def test_reload_mode_renders_every_route_setting_and_each_host_name_and_nginx_accepts_it(tmp_path):
    route = Route("demo", "/api/", "demo.test,*.demo.test", Pool("v1", (("127.0.0.1", 1),)),
                  settings=(("allow", "10.0.0.0/8,2001:db8::/32"), ("body_size", "10m"), ("buffering", "off"),
                            ("connect_timeout", "250ms"), ("rate_limit", "50r/s,burst=100"), ("retries", "4"),
                            ("timeout", "2m")))
    quiet = Route("quiet", "/q/", "", Pool("v1", (("127.0.0.1", 2),)), settings=(("retries", "0"),))
    text = render([route, quiet], str(tmp_path), "127.0.0.1:18999")
    assert nginx_t(tmp_path, text).exists()
    assert "server_name demo.test;" in text and "server_name *.demo.test;" in text
    for line in ("allow 10.0.0.0/8;", "allow 2001:db8::/32;", "deny all;", "client_max_body_size 10m;",
                 "proxy_read_timeout 2m;", "proxy_send_timeout 2m;", "proxy_connect_timeout 250ms;",
                 "proxy_next_upstream_tries 5;", "proxy_buffering off;", "proxy_next_upstream off;",
                 "limit_req_zone $binary_remote_addr zone=proxystack_demo:10m rate=50r/s;",
                 "limit_req zone=proxystack_demo burst=100 nodelay;"):
        assert line in text, line
