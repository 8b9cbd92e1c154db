# Renders conversations with transformers' apply_chat_template (its Jinja sandbox) under the chat
# templates gemma-lm holds (GEMMA_JINJA, GEMMA3_JINJA in crates/gemma-lm/src/tokenizer.rs, read from
# that file), and writes fixtures/chat-templates/cases.json: each case's messages, the template,
# add_generation_prompt, and transformers' text or its error. Run with the cached torch
# environment's python (transformers 5.17): python scripts/make_chat_template_fixtures.py
import json, os, re, transformers
from transformers import PreTrainedTokenizerFast

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.join(here, "..")
source = open(os.path.join(root, "crates/gemma-lm/src/tokenizer.rs")).read()
gemma = re.search(r'pub const GEMMA_JINJA: &str = "(.*)";\n', source).group(1)
gemma = gemma.encode().decode("unicode_escape")
gemma3 = re.search(r'pub const GEMMA3_JINJA: &str = r#"(.*?)"#;', source, re.S).group(1)
tok = PreTrainedTokenizerFast.from_pretrained(os.path.join(root, "fixtures/hf-parity/tokenizer/model"))
conversations = [
    [{"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "user", "content": "  Hi  "}, {"role": "assistant", "content": " Hello.\n"},
     {"role": "user", "content": "Bye"}],
    [{"role": "system", "content": "Be brief. "}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Arr."}, {"role": "user", "content": "Where?"}],
    [{"role": "assistant", "content": "I start."}],
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
]
cases = []
for name, template in [("gemma", gemma), ("gemma3", gemma3)]:
    for messages in conversations:
        for add in [False, True]:
            case = {"template": name, "messages": messages, "add_generation_prompt": add}
            try:
                case["text"] = tok.apply_chat_template(messages, chat_template=template,
                                                       add_generation_prompt=add, tokenize=False,
                                                       bos_token="<bos>")
            except Exception as e:
                case["error"] = str(e)
            cases.append(case)
out = {"transformers": transformers.__version__, "cases": cases}
json.dump(out, open(os.path.join(root, "fixtures/chat-templates/cases.json"), "w"), indent=1)
print(len(cases), "cases;", sum("error" in c for c in cases), "errors")
