"""``GET /v1/prices``: what each model a key may use costs it, per million tokens.

The catalog's price for every deployed model and alias the caller may use (an alias is priced as the model
it routes to; a model without a price row at the billing defaults), so a client such as `moecloud eval`
compares models at the prices it will be billed, without the admin key.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from moecloud.gateway.api.deps import CallerDep, State

router = APIRouter()


@router.get("/v1/prices")
async def prices(caller: CallerDep, state: State) -> dict[str, Any]:
    catalog = state.catalog
    names = [name for name in await catalog.models() if caller.may_use(name)]
    names += [alias for alias, target in sorted((await catalog.aliases()).items())
              if caller.may_use(alias) or caller.may_use(target)]
    data = []
    for name in names:
        price = await catalog.price(await catalog.resolve(name))
        data.append({"model": name, "input_miss": str(price.input_miss), "input_hit": str(price.input_hit),
                     "output": str(price.output), "currency": state.settings.billing.currency})
    return {"object": "list", "data": data}
