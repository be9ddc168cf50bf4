"""start -> get -> search -> journal -> retry through the Python client that
openapi-python-client generated from the served OpenAPI document (package `orch_client`), and a
start -> get through the checkout workflow's typed operations, whose models are the workflow's
Rust types. Usage: python flow.py <base-url> <failed-instance-id>"""
import sys
import time

from orch_client import Client
from orch_client.api.definitions import get_definition
from orch_client.api.instances import get_instance, get_journal, search_instances, start_instance
from orch_client.api.operations import retry_instance
from orch_client.api.workflows import get_checkout_instance, start_checkout_instance
from orch_client.models import (CheckoutInstance, InstancePage, LineItem, Order, RetryRequest,
                                StartCheckoutRequest, StartRequest)

base, failed = sys.argv[1], sys.argv[2]
client = Client(base_url=base, raise_on_unexpected_status=True)

definition = get_definition.sync(name="checkout", client=client)
assert definition.name == "checkout", definition
assert definition.input_trace is not None, "getDefinition parses the traced schema"
assert definition.input_schema["title"] == "Order", definition.input_schema

# The checkout's input is a real model with its fields' types, not Any.
assert StartCheckoutRequest.__annotations__["input_"] == "Order", StartCheckoutRequest.__annotations__
assert {k: v for k, v in Order.__annotations__.items() if k != "additional_properties"} == {
    "id": "str", "customer": "str", "items": "list[LineItem]", "card": "str", "address": "str",
    # Optional (serde default): the example's --payment-queue.
    "payment_queue": "bool | Unset",
}, Order.__annotations__
assert LineItem.__annotations__["qty"] == "int", LineItem.__annotations__
typed = start_checkout_instance.sync(client=client, body=StartCheckoutRequest(
    input_=Order(id="typed-py", customer="typed-py-customer", items=[LineItem(sku="mug", qty=2)],
                 card="4242", address="1 Typed Way"),
    id="typed-py"))
assert typed.id == "typed-py", typed
got = get_checkout_instance.sync(id="typed-py", client=client)
assert isinstance(got, CheckoutInstance), got
assert isinstance(got.input_, Order) and got.input_.items[0].qty == 2, got.input_

order = {"id": "py-order", "customer": "py-customer", "items": [{"sku": "mug", "qty": 1}],
         "card": "4242", "address": "1 Python Way"}
started = start_instance.sync(client=client, body=StartRequest(workflow="checkout", input_=order, id="py-order"))
assert started.id == "py-order", started

got = get_instance.sync(id="py-order", client=client)
assert got.workflow == "checkout", got

page = search_instances.sync(client=client, workflow="checkout", id_prefix="py-")
assert [i.id for i in page.instances] == ["py-order"], page
# openapi-python-client 0.29 flattens an object query parameter into `customer=...`,
# ignoring `style: deepObject`: send the attribute filter through its httpx client and parse
# the page with the generated model.
deadline = time.time() + 30
while True:
    res = client.get_httpx_client().get("/api/v1/instances", params={"attr[customer]": "py-customer"})
    assert res.status_code == 200, res.text
    page = InstancePage.from_dict(res.json())
    if [i.id for i in page.instances] == ["py-order"] or time.time() > deadline:
        break
    time.sleep(0.2)
assert [i.id for i in page.instances] == ["py-order"], f"attr filter: {page}"

journal = get_journal.sync(id=failed, client=client)
assert any(e.kind == "step" for e in journal.entries), journal

retried = retry_instance.sync(id=failed, client=client, body=RetryRequest())
assert retried.id == failed, retried
print("python client flow: ok")
