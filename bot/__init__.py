"""finetune-bot: start, inspect and cancel OpenAI fine-tuning jobs from Slack."""
