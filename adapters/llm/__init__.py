"""LanguageModel adapters, one module per provider wire format."""
