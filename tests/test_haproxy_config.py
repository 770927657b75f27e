"""The HAProxy configuration for a scale-out (coordinator/haproxy.py): pure text, checked
here line by line and, when HAProxy is installed, by `haproxy -c` itself."""

from __future__ import annotations

import subprocess

import pytest

from careline.coordinator.haproxy import CHECK_FALL, check_interval_ms, find_haproxy, haproxy_config
from careline.coordinator.pki import create_pki
from careline.shared.errors import ConfigError


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def test_tcp_passthrough_leastconn_and_tls_health_check():
    text = haproxy_config("0.0.0.0:8443", ["10.0.0.1:8443", "10.0.0.2:8443"],
                          "/srv/careline/pki/ca.pem")
    got = lines(text)
    assert "mode tcp" in got
    assert "bind 0.0.0.0:8443" in got  # no "ssl crt": the proxy does not terminate TLS
    assert "balance leastconn" in got
    assert ("default-server check check-ssl verify required ca-file /srv/careline/pki/ca.pem "
            "inter 5000ms fall 2 rise 2") in got
    assert "timeout check 5000ms" in got
    assert got[-2:] == ["server careline1 10.0.0.1:8443", "server careline2 10.0.0.2:8443"]
    assert "timeout client 960s" in got
    assert "timeout server 960s" in got
    assert "option redispatch" in got


def test_with_health_ports_the_check_is_a_plain_http_get_on_them():
    got = lines(haproxy_config("0.0.0.0:8443", ["10.0.0.1:8443/8444", "10.0.0.2:8443/8444"],
                               "/srv/careline/pki/ca.pem", server_maxconn=9000))
    assert "option httpchk" in got
    assert "http-check send meth GET uri /health ver HTTP/1.0" in got
    assert "http-check expect status 200" in got
    assert "default-server check inter 5000ms fall 2 rise 2 maxconn 9000" in got
    assert "timeout check 5000ms" in got
    assert not any("check-ssl" in line for line in got)
    assert got[-2:] == ["server careline1 10.0.0.1:8443 port 8444",
                        "server careline2 10.0.0.2:8443 port 8444"]


@pytest.mark.parametrize(("interval", "ms"), [(30.0, 5000), (4.0, 2000), (1.0, 500), (0.5, 250)])
def test_a_frozen_process_is_out_before_its_agents_give_it_up(interval, ms):
    assert check_interval_ms(interval) == ms
    # The next check starts within one check interval, then CHECK_FALL checks time out in a
    # row, each taking at most one: out before its agents give it up (two intervals).
    assert (ms + CHECK_FALL * ms) / 1000 <= 2 * interval


@pytest.mark.parametrize(("interval", "ms"), [(30.0, 5000), (10.0, 2000), (2.0, 400), (0.2, 100)])
def test_with_health_ports_a_frozen_process_is_out_before_any_agent_notices(interval, ms):
    assert check_interval_ms(interval, health_port=True) == ms
    # Each failing check waits its turn (one interval) and its timeout (as long): out before
    # the earliest agent notices, one heartbeat interval after the freeze (its last pong
    # came one interval before it, and two intervals of silence are its limit).
    if ms > 100:  # (100 ms is HAProxy's floor here)
        assert CHECK_FALL * 2 * ms / 1000 < interval
    config = lines(haproxy_config("127.0.0.1:1", ["127.0.0.1:2/3"], "/ca.pem",
                                  heartbeat_interval=interval))
    assert f"default-server check inter {ms}ms fall {CHECK_FALL} rise 2" in config


def test_each_process_takes_what_its_open_files_allow_and_the_rest_wait_in_the_queue():
    unlimited = lines(haproxy_config("127.0.0.1:1", ["127.0.0.1:2"], "/ca.pem"))
    assert not any("maxconn 19700" in line for line in unlimited)
    got = lines(haproxy_config("127.0.0.1:1", ["127.0.0.1:2"], "/ca.pem", server_maxconn=19700))
    (default_server,) = [line for line in got if line.startswith("default-server")]
    assert default_server.endswith(" maxconn 19700")
    assert "timeout queue 10s" in got


def test_idle_timeouts_follow_the_technicians_idle_limit():
    text = haproxy_config("127.0.0.1:1", ["127.0.0.1:2"], "/ca.pem", admin_idle_timeout=3600)
    assert "timeout client 3660s" in lines(text)


@pytest.mark.parametrize(("listen", "backends", "ca"), [
    ("8443", ["127.0.0.1:1"], "/ca.pem"),
    ("127.0.0.1:99999", ["127.0.0.1:1"], "/ca.pem"),
    ("127.0.0.1:8443", [], "/ca.pem"),
    ("127.0.0.1:8443", ["localhost"], "/ca.pem"),
    ("127.0.0.1:8443", ["127.0.0.1:1"], "/my data/ca.pem"),
    ("127.0.0.1:8443", ["127.0.0.1:1/"], "/ca.pem"),
    ("127.0.0.1:8443", ["127.0.0.1:1/health"], "/ca.pem"),
    ("127.0.0.1:8443", ["127.0.0.1:1/70000"], "/ca.pem"),
    ("127.0.0.1:8443", ["127.0.0.1:1/2", "127.0.0.1:3"], "/ca.pem"),  # one check kind for all
])
def test_bad_input_is_named(listen, backends, ca):
    with pytest.raises(ConfigError):
        haproxy_config(listen, backends, ca)


@pytest.mark.skipif(find_haproxy() is None,
                    reason="haproxy is not installed (scripts/test.sh installs Debian's package)")
@pytest.mark.parametrize("backends", [["127.0.0.1:18444", "127.0.0.1:18445"],
                                      ["127.0.0.1:18444/18446", "127.0.0.1:18445/18447"]])
def test_haproxy_accepts_it(tmp_path, backends):
    create_pki(tmp_path / "pki", ["127.0.0.1"])  # a real CA file for `verify required`
    ca = tmp_path / "pki" / "ca.pem"
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config("127.0.0.1:18443", backends, str(ca), maxconn=100))
    result = subprocess.run([str(find_haproxy()), "-c", "-f", str(config)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
