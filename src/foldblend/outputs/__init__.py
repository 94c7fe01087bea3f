"""What a run hands to people: submissions (`submit`), the closing table (`summary`), the HTML report
(`report`, `plots`), scores on a labelled folder (`evaluate`) and predictions for new images (`predict`)."""
