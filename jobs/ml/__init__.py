"""The ML example's own nodes (jobs/dags/bt_xs_bilstm.yaml): a backtest of the trained BiLSTM and its model card."""
