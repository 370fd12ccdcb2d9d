"""Each PII validator on numbers that pass and on look-alikes that must not (wrong check digit, impossible date,
off the number plan, order numbers)."""

from __future__ import annotations

import pytest

from moecloud.security.pii import (
    PiiDetector,
    id_check_digit,
    luhn_check_digit,
    valid_card,
    valid_cn_id,
    valid_intl_phone,
    valid_mobile,
)


def kinds(text: str) -> list[str | None]:
    return [finding.kind for finding in PiiDetector().detect(text)]


def test_resident_id_check_digit_and_birth_date() -> None:
    assert id_check_digit("11010519491231002") == "X"
    assert valid_cn_id("11010519491231002X") and valid_cn_id("11010519491231002x")
    assert not valid_cn_id("110105194912310021")  # wrong check digit
    first17 = "11010519491331002"  # month 13
    assert not valid_cn_id(first17 + id_check_digit(first17))
    first17 = "99010519491231002"  # no province 99
    assert not valid_cn_id(first17 + id_check_digit(first17))
    assert kinds("身份证11010519491231002X。") == ["CN_ID"]
    assert kinds("身份证 110105 19491231 002X") == ["CN_ID"]
    assert kinds("身份证110105194912310021。") == []


def test_bank_cards_by_luhn_and_scheme() -> None:
    assert luhn_check_digit("411111111111111") == "1"
    assert valid_card("4111111111111111") and valid_card("6222021234567894")
    unionpay19 = "622848001234567890"
    assert valid_card(unionpay19 + luhn_check_digit(unionpay19))
    assert not valid_card("4111111111111112")  # Luhn fails
    nine = "9" * 15
    assert not valid_card(nine + luhn_check_digit(nine))  # Luhn passes, no scheme issues 99...
    assert kinds("card 6222-0212-3456-7894") == ["BANK_CARD"] == kinds("card 6222 0212 3456 7894")
    assert kinds("订单号 6222021234567894") == []  # an order number, whatever its digits add up to


def test_mobiles_follow_the_number_plan() -> None:
    assert valid_mobile("13812345678") and valid_mobile("199 1234 5678") and valid_mobile("145-1234-5678")
    assert not valid_mobile("12812345678") and not valid_mobile("14012345678") and not valid_mobile("1381234567")
    assert kinds("电话+86 138 1234 5678") == ["PHONE"] == kinds("电话 008613812345678")
    assert kinds("电话 138123456789") == []  # 12 digits
    assert kinds("运单号13812345678") == []


def test_international_numbers_need_a_country_code_and_e164_length() -> None:
    assert valid_intl_phone("+44 20 7946 0958") and valid_intl_phone("+1 (415) 555-0132")
    assert not valid_intl_phone("+0 12 3456 7890") and not valid_intl_phone("+44 12 34")
    assert kinds("call +81 3-1234-5678 tomorrow") == ["PHONE"]
    assert kinds("score was +3 10 5") == []


def test_emails_and_passports() -> None:
    assert kinds("mail li.wei+news@mail.example.com.cn now") == ["EMAIL"]
    assert kinds("mention @someone on weibo, or a@b") == []
    assert kinds("护照号 E12345678") == ["PASSPORT"] == kinds("passport EA1234567")
    assert kinds("Passport no. 123456789") == ["PASSPORT"]
    assert kinds("part number 123456789") == []  # a generic number needs the word passport nearby
    assert kinds("product E1234567 in stock") == []


@pytest.mark.parametrize("text", [
    "订单号：202311051234567890", "order 2023110512345678 shipped", "2024-05-17 13:30", "¥12,345.67",
    "tracking SF1234567890123", "build 1699999999123", "ISBN 978-7-111-12345-6", "IP 192.168.100.200",
])
def test_everyday_numbers_are_not_pii(text: str) -> None:
    assert kinds(text) == []
