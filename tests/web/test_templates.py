"""The console's templates: stored values are translated as text, never trusted as markup."""

from __future__ import annotations

import pytest

from careline.coordinator import i18n
from careline.coordinator.web.jinja import environment

HOSTILE = '<img src=x onerror="alert(1)">'  # e.g. a job status an infected agent reported


@pytest.mark.parametrize("lang", ["vi", "en"])
def test_a_status_is_translated_and_escaped(lang: str) -> None:
    env = environment("web", None)
    env.install_gettext_translations(i18n.translations(lang, "web"), newstyle=True)  # type: ignore[attr-defined]
    page = env.from_string('{% import "_macros.html" as m with context %}{{ m.status(a) }} {{ m.status(b) }}')
    html = page.render(lang=lang, a=HOSTILE, b="online", can_act=True, csrf="", here="/")
    assert HOSTILE not in html
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html
    assert ("trực tuyến" if lang == "vi" else ">online<") in html


def test_products_in_a_translated_sentence_are_escaped() -> None:
    env = environment("web", None)
    env.install_gettext_translations(i18n.translations("vi", "web"), newstyle=True)  # type: ignore[attr-defined]
    html = env.from_string('{{ _("Restart %(p)s", p=name) }}').render(lang="vi", name=HOSTILE)
    assert html.startswith("Khởi động lại &lt;img")


def test_reasons_are_worded_for_the_reader_and_old_english_ones_shown_as_stored() -> None:
    from careline.coordinator.policy.reasons import Reason

    env = environment("web", None)
    env.install_gettext_translations(i18n.translations("vi", "web"), newstyle=True)  # type: ignore[attr-defined]
    stored = ["Covered by warranty until 2027-01-14",  # decided before reasons were data
              Reason("rule", {"index": 5, "text": HOSTILE}).to_dict(),
              Reason("fee_not_covered", {"action": "onsite_reinstall", "fee_vnd": 550_000}).to_dict()]
    html = env.from_string('{% for r in reasons %}<li>{{ r|reason }}</li>{% endfor %}').render(
        lang="vi", tz="Asia/Ho_Chi_Minh", reasons=stored)
    shown = html.replace("\xa0", " ").split("</li>")
    assert shown[0] == "<li>Covered by warranty until 2027-01-14"
    assert shown[1] == "<li>Quy tắc rules[5]: &lt;img src=x onerror=&#34;alert(1)&#34;&gt;"
    assert shown[2].startswith("<li>Tính phí 550.000 ₫: giá niêm yết của cài lại tại chỗ")
