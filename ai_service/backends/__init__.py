"""Where analyses come from: Claude through the Anthropic SDK, or the offline analyzer."""
