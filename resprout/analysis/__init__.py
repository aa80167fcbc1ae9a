"""Analysis: reports, tables and plots read from the results store, and model cost. Reads models, never trains."""
