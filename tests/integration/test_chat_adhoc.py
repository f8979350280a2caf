"""Chat and XEP-0050 ad-hoc: the same commands, the same permission checks."""
from __future__ import annotations

from agent_fixtures import grant

HV_NS = "archipel:hypervisor:control"


async def test_chat_help_for_admin_lists_everything(agent, admin):
    text = await admin.chat(agent.full_jid, "help")
    for word in ("capabilities", "nodeinfo", "migration info", "ip", "vms"):
        assert word in text


async def test_chat_stranger_is_not_talked_to(agent, new_user):
    stranger = await new_user("stranger")
    text = await stranger.chat(agent.full_jid, "help")
    assert "not allowed to talk to me" in text


async def test_chat_help_lists_only_permitted_commands(agent, admin, new_user):
    user = await new_user()
    await grant(admin, agent.full_jid, user.jid, "message", "nodeinfo")
    text = await user.chat(agent.full_jid, "help")
    assert "nodeinfo" in text
    assert "capabilities" not in text and "migration info" not in text


async def test_chat_command_and_refusal(agent, admin, new_user):
    user = await new_user()
    await grant(admin, agent.full_jid, user.jid, "message", "nodeinfo")
    text = await user.chat(agent.full_jid, "nodeinfo")
    assert "CPUs at" in text and "MiB of memory" in text
    text = await user.chat(agent.full_jid, "capabilities")
    assert "Cannot use 'capabilities': permission denied" in text


async def test_chat_unknown_command_suggests_help(agent, admin):
    text = await admin.chat(agent.full_jid, "make coffee")
    assert "I don't know 'make'" in text and "help" in text


async def test_chat_admin_runs_multiword_command(agent, admin, stack):
    text = await admin.chat(agent.full_jid, "migration info")
    assert stack.libvirt_uri in text


async def test_adhoc_listed_and_executed(agent, admin):
    plugin = admin.xmpp.plugin["xep_0050"]
    items = await plugin.get_commands(agent.full_jid, timeout=10)
    nodes = {item[1] for item in items["disco_items"]["items"]}
    assert f"{HV_NS}#nodeinfo" in nodes
    result = await plugin.send_command(agent.full_jid, f"{HV_NS}#nodeinfo", timeout=10)
    command = result["command"]
    assert command["status"] == "completed"
    assert "CPUs at" in "\n".join(command["form"].get_values()["result"])


async def test_adhoc_refused_for_stranger(agent, new_user):
    stranger = await new_user("stranger")
    result = await stranger.xmpp.plugin["xep_0050"].send_command(agent.full_jid, f"{HV_NS}#capabilities", timeout=10)
    notes = result["command"]["notes"]
    assert notes and notes[0][0] == "error" and "permission denied" in notes[0][1]


async def test_adhoc_with_arguments_shows_form_then_runs(agent, admin, new_user):
    user = await new_user()
    await grant(admin, agent.full_jid, user.jid, "ip")
    plugin = admin.xmpp.plugin["xep_0050"]
    first = await plugin.send_command(agent.full_jid, "archipel:permissions#get", timeout=10)
    form = first["command"]["form"]
    assert "permission_target" in form.get_fields()
    session = first["command"]["sessionid"]
    submit = admin.xmpp.plugin["xep_0004"].make_form(ftype="submit")
    submit.add_field(var="permission_target", value=user.jid)
    done = await plugin.send_command(agent.full_jid, "archipel:permissions#get", action="complete",
                                     sessionid=session, payload=submit, timeout=10)
    assert done["command"]["status"] == "completed"
    assert "permission name=ip" in "\n".join(done["command"]["form"].get_values()["result"])
