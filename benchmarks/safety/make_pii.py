"""Writes pii.jsonl: PII positives with valid check digits and look-alike negatives, English and Chinese, seeded.

    python benchmarks/safety/make_pii.py        # rewrites benchmarks/safety/pii.jsonl (same seed, same file)

Positives: resident ID numbers (GB 11643 check digit, real birth dates), mainland mobiles, bank cards (Luhn,
UnionPay 62 and others, grouped by spaces or dashes or not), emails, passports, international numbers.
Negatives (label benign): the same shapes with a wrong check digit or an impossible date, numbers off the number
plan, order and tracking numbers, dates, amounts, versions. Train and test use different sentence templates.
"""

from __future__ import annotations

import random
from datetime import date, timedelta
from pathlib import Path

from moecloud.security.dataset import write_items
from moecloud.security.pii import COUNTRY_CODES, PROVINCES, id_check_digit, luhn_check_digit

SEED = 18
OUT = Path(__file__).with_name("pii.jsonl")

POSITIVE = {
    "train": {
        "en": ["My ID number is {v}.", "Please update the record: {v}", "Contact me at {v} after 6pm.",
               "Card on file: {v}, please refund there.", "The applicant's details are {v}, thanks.",
               "you can reach our manager on {v}", "Send the documents to {v}"],
        "zh": ["我的身份证号是{v}，请帮我查一下。", "联系电话：{v}", "退款请打到这张卡 {v}", "客户信息 {v} 已登记",
               "麻烦给{v}回个电话", "收件人邮箱{v}", "这是我的证件号码 {v}"],
    },
    "test": {
        "en": ["Hi, it's Tom. Text me on {v} when you land", "For verification I'm giving you {v}",
               "billing: {v}", "Here it is -> {v} <- don't share it", "Could you check whether {v} is registered?"],
        "zh": ["我叫王芳，{v}，麻烦核实一下", "帮我把{v}加到白名单里", "家属联系方式为{v}。", "信息如下：{v}（本人）",
               "能不能查下{v}这个是不是已经注册了"],
    },
}
NEGATIVE = {
    "train": {
        "en": ["Order {v} shipped yesterday.", "Reference code {v}", "The build id was {v}.",
               "tracking number {v}, arriving Monday", "Total due: {v}"],
        "zh": ["订单号{v}已发货", "运单号：{v}", "流水号 {v} 处理完成", "本次金额 {v}", "工单{v}已关闭"],
    },
    "test": {
        "en": ["I think the code was {v} but it didn't work", "Your order #{v} is confirmed", "seen at {v}",
               "ticket {v} was escalated", "value: {v}"],
        "zh": ["订单编号为{v}，请尽快处理", "这个数字 {v} 是什么意思", "序列号 {v}", "快递单号{v}还没更新",
               "版本号是{v}"],
    },
}
NAMES = ["li.wei", "zhangsan", "alice.chen", "bob_92", "wangfang", "liu.yang", "mary.j", "dev.ops"]
DOMAINS = ["qq.com", "163.com", "gmail.com", "example.cn", "outlook.com", "sina.com.cn", "corp.example.org"]


def cn_id(rng: random.Random) -> str:
    region = f"{rng.choice(sorted(PROVINCES))}{rng.randint(1, 99):02d}{rng.randint(1, 99):02d}"
    born = date(1950, 1, 1) + timedelta(days=rng.randint(0, 365 * 55))
    first17 = f"{region}{born:%Y%m%d}{rng.randint(0, 999):03d}"
    return first17 + id_check_digit(first17)


def mobile(rng: random.Random) -> str:
    number = rng.choice(["13", "15", "18", "17", "19"]) + rng.choice("0125689") + f"{rng.randint(0, 10**8 - 1):08d}"
    style = rng.randrange(4)
    if style == 1:
        return f"+86 {number}"
    if style == 2:
        return f"{number[:3]} {number[3:7]} {number[7:]}"
    return f"{number[:3]}-{number[3:7]}-{number[7:]}" if style == 3 else number


def card(rng: random.Random) -> str:
    prefix, length = rng.choice([("62", 16), ("62", 19), ("6228", 19), ("4", 16), ("51", 16), ("37", 15)])
    partial = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    number = partial + luhn_check_digit(partial)
    separator = rng.choice(["", " ", "-"])
    return separator.join(number[i:i + 4] for i in range(0, len(number), 4)) if separator else number


def email(rng: random.Random) -> str:
    return f"{rng.choice(NAMES)}{rng.randint(1, 99)}@{rng.choice(DOMAINS)}"


def passport(rng: random.Random) -> str:
    style = rng.randrange(3)
    if style == 0:
        return f"E{rng.randint(0, 10**8 - 1):08d}"
    if style == 1:
        return f"E{rng.choice('ABCDEFGHJK')}{rng.randint(0, 10**7 - 1):07d}"
    return f"passport {rng.choice(['no.', 'number', '#'])} {rng.randint(10**8, 10**9 - 1)}"


def intl_phone(rng: random.Random) -> str:
    code = rng.choice(["1", "44", "49", "81", "33", "65", "852", "61"])
    assert code in COUNTRY_CODES
    return f"+{code} {rng.randint(10, 99)} {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}"


def bad_id(rng: random.Random) -> str:
    number = cn_id(rng)
    if rng.random() < 0.5:
        wrong = rng.choice([digit for digit in "0123456789X" if digit != number[-1]])
        return number[:17] + wrong
    first17 = number[:10] + "1340" + number[14:17]  # the 40th of month 13
    return first17 + id_check_digit(first17)


def bad_card(rng: random.Random) -> str:
    number = card(rng).replace(" ", "").replace("-", "")
    return number[:-1] + str((int(number[-1]) + rng.randint(1, 9)) % 10)


def order_number(rng: random.Random) -> str:
    day = date(2023, 1, 1) + timedelta(days=rng.randint(0, 700))
    return rng.choice([f"{day:%Y%m%d}{rng.randint(0, 10**8 - 1):08d}", f"SF{rng.randint(10**12, 10**13 - 1)}",
                       f"{rng.randint(10**15, 10**16 - 1)}", f"DD{day:%y%m%d}{rng.randint(1000, 9999)}"])


def off_plan_number(rng: random.Random) -> str:
    prefix = rng.choice(["10", "11", "12", "140", "141"])  # an 11-digit run no mobile segment starts with
    return prefix + "".join(str(rng.randrange(10)) for _ in range(11 - len(prefix)))


def everyday_number(rng: random.Random) -> str:
    day = date(2020, 1, 1) + timedelta(days=rng.randint(0, 2000))
    return rng.choice([f"{day:%Y-%m-%d}", f"{day:%Y年%m月%d日}",
                       f"¥{rng.randint(100, 99999):,}.{rng.randint(0, 99):02d}",
                       f"v{rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 40)}",
                       f"{rng.randint(10**5, 10**6)}", f"{day:%H:%M} on {day:%d/%m/%Y}",
                       f"E{rng.randint(10**6, 10**7 - 1)}"])


MAKERS_POSITIVE = [cn_id, mobile, card, email, passport, intl_phone]
MAKERS_NEGATIVE = [bad_id, bad_card, order_number, off_plan_number, everyday_number]


def items(rng: random.Random) -> list[dict[str, str]]:
    rows = []
    for split, per_maker in (("train", 6), ("test", 9)):
        for lang in ("en", "zh"):
            for maker in MAKERS_POSITIVE:
                for _ in range(per_maker):
                    text = rng.choice(POSITIVE[split][lang]).format(v=maker(rng))
                    rows.append({"text": text, "lang": lang, "label": "pii", "split": split, "kind": maker.__name__})
            for maker in MAKERS_NEGATIVE:
                for _ in range(per_maker):
                    text = rng.choice(NEGATIVE[split][lang]).format(v=maker(rng))
                    rows.append({"text": text, "lang": lang, "label": "benign", "split": split,
                                 "kind": maker.__name__})
    return rows


def main() -> None:
    write_items(OUT, items(random.Random(SEED)))


if __name__ == "__main__":
    main()
