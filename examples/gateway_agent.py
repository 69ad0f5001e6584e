"""An agent written with the official `openai` client (no turngym API), trained on HopQA through the gateway.

    turngym train default rollout=agent:examples/gateway_agent.py:run

`task` gives the env's prompt (`task.messages`), its tools as OpenAI schemas (`task.tools`), the env's tool
(`task.call_tool`) and scorer (`task.score`); the reward this function returns ends the episode.
"""

import re

ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL)


async def run(client, task) -> float:
    messages = list(task.messages)  # the system prompt and the question
    for _ in range(task.max_turns or 8):
        reply = await client.chat.completions.create(model="policy", messages=messages, tools=task.tools)
        msg = reply.choices[0].message
        messages.append(msg.model_dump(exclude_none=True))  # re-sent as returned: the recorded ids are re-used
        answer = ANSWER.search(msg.content or "")
        if answer:
            return task.score(answer.group(1))
        for call in msg.tool_calls or []:
            result = task.call_tool(call.function.name, call.function.arguments)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        if not msg.tool_calls:
            messages.append({"role": "user", "content": "Search with <search> query </search>, "
                                                        "or answer with <answer> name </answer>."})
    return 0.0
